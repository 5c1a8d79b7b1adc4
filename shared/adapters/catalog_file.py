"""Reads catalog documents from YAML files and hands plain data to ``Catalog.from_dict``.

The adapter knows about files and YAML; validation and meaning live in ``shared.domain.catalog``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

import yaml

from shared.domain.catalog import Catalog
from shared.domain.errors import CatalogError

CATALOG_DIR: Final = Path(__file__).resolve().parent.parent / "catalogs"
DEFAULT_CATALOG_FILES: Final = ("usage_tiers.yaml", "report_plans.yaml", "classic_plans.yaml")


def load_catalog_file(path: Path) -> Catalog:
    """Parse one YAML catalog document; errors name the file and the offending field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CatalogError(f"{path}: cannot read catalog file: {error}") from error
    except yaml.YAMLError as error:
        raise CatalogError(f"{path}: invalid YAML: {error}") from error
    try:
        return Catalog.from_dict(data)
    except CatalogError as error:
        raise CatalogError(f"{path.name}: {error}") from error


def load_catalog(paths: Iterable[Path]) -> Catalog:
    """Load and merge several documents; an id defined twice across them is an error."""
    return Catalog.merge(load_catalog_file(path) for path in paths)


def load_default_catalog() -> Catalog:
    """The catalogs shipped in ``shared/catalogs`` (usage tiers, report plans, classic plans)."""
    return load_catalog(CATALOG_DIR / name for name in DEFAULT_CATALOG_FILES)


def read_catalog_documents(paths: Iterable[Path]) -> list[object]:
    """The documents of these YAML files as plain data (for `billing catalog import`), each validated like
    `load_catalog_file` validates it; errors name the file."""
    documents: list[object] = []
    for path in paths:
        load_catalog_file(path)
        documents.append(yaml.safe_load(path.read_text(encoding="utf-8")))
    return documents


def dump_catalog_document(document: object) -> str:
    """A catalog document as YAML text (`billing catalog export`), readable by `load_catalog_file`."""
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
