"""README stays true to the code: every setting is documented, and the two commands come first."""

from pathlib import Path

import pytest

from shared.config import Settings

pytestmark = pytest.mark.unit

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_the_code_reads_is_in_the_readme_table():
    missing = [f"BILLING_{name.upper()}" for name in Settings.model_fields if f"BILLING_{name.upper()}" not in README]
    assert missing == []


def test_the_first_two_commands_are_the_demo_and_the_tests():
    commands = [line.split("#")[0].strip() for line in README.splitlines() if line.startswith("make ")]
    assert commands[:2] == ["make demo", "make test"]
