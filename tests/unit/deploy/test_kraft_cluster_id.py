"""The local stack's KRaft cluster id never starts with '-': kafka-storage reads `-t -Abc...` as an option and the
private brokers' storage format failed about once in 64 starts (seen in CI as "storage format failed")."""

from __future__ import annotations

import base64
import uuid
from unittest import mock

import pytest

from tests.outage_support import stack

pytestmark = pytest.mark.unit


def test_an_id_that_would_start_with_a_dash_is_drawn_again() -> None:
    dashed = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))  # base64url of 0b111110... starts with '-'
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    fine = uuid.UUID(int=1)
    with mock.patch.object(stack.uuid, "uuid4", side_effect=[dashed, fine]):
        cluster_id = stack.kraft_cluster_id()
    assert not cluster_id.startswith("-")
    assert base64.urlsafe_b64decode(cluster_id + "==") == fine.bytes
