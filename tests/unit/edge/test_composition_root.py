"""The edge's app-wide services come from its composition root only: `create_app` installs what
`build_edge_services` built, and the readers routes and middlewares use find them on `app.state` without
ever building one on a request (a missing one is a wiring error)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from services.ingest.app import create_app
from services.ingest.auth import authenticator_of
from services.ingest.bootstrap import build_container, build_edge_services
from services.ingest.quota_spend import spend_service_of
from services.ingest.routes.ingest import directory_of

pytestmark = pytest.mark.unit


def _request(**state: object) -> SimpleNamespace:
    return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(**state)))


def test_the_spend_service_is_built_by_the_root_on_the_containers_engine_clock_and_catalog() -> None:
    container = build_container()  # connects to nothing until used
    spend = build_edge_services(container).spend
    assert (spend._engine, spend._clock, spend._catalog) == (container.engine, container.clock, container.catalog)


def test_the_readers_return_what_the_root_installed() -> None:
    app = create_app(build_container())
    request = SimpleNamespace(app=app)
    assert authenticator_of(request) is app.state.authenticator  # type: ignore[arg-type]
    assert asyncio.run(directory_of(request)) is app.state.directory  # type: ignore[arg-type]
    assert spend_service_of(request) is app.state.spend  # type: ignore[arg-type]


def test_a_service_the_root_did_not_install_is_an_error_not_built_on_the_request() -> None:
    request = _request()
    with pytest.raises(AttributeError):
        authenticator_of(request)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        asyncio.run(directory_of(request))  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        spend_service_of(request)  # type: ignore[arg-type]
    assert vars(request.app.state) == {}  # nothing was built and installed behind the caller's back
