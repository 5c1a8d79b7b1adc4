"""The edge's composition root builds each app-wide service once per app; routes find them on app.state."""

from __future__ import annotations

import pytest

from services.ingest.app import create_app
from services.ingest.auth import Authenticator
from services.ingest.bootstrap import build_container, build_edge_services
from services.ingest.directory import CustomerDirectory
from services.ingest.metrics import EdgeMetrics
from services.ingest.service_layer.spend import SpendService

pytestmark = pytest.mark.unit


def test_each_app_holds_its_own_services_built_by_the_composition_root():
    container = build_container()  # connects to nothing until used
    first, second = create_app(container), create_app(container)
    for app in (first, second):
        assert app.state.container is container
        assert isinstance(app.state.authenticator, Authenticator)
        assert isinstance(app.state.metrics, EdgeMetrics)
        assert isinstance(app.state.directory, CustomerDirectory)
        assert isinstance(app.state.spend, SpendService)
    # one cache per app, shared by its requests: never one per request, nor one for every app
    assert first.state.authenticator is not second.state.authenticator
    assert first.state.directory is not second.state.directory
    assert first.state.spend is not second.state.spend


def test_the_edge_services_use_the_containers_engine_and_admin_key():
    container = build_container()
    services = build_edge_services(container)
    assert services.authenticator.engine is container.engine
    assert services.authenticator.admin_token == container.settings.admin_api_key.get_secret_value()
