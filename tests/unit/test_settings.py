"""Settings survive the trip through a child process's environment."""

import pytest

from shared.config import Settings

pytestmark = pytest.mark.unit


def test_settings_rendered_as_environment_rebuild_the_same_settings(monkeypatch):
    original = Settings(topic_prefix="t1.", database_schema="s1", dunning_retry_days=(2, 4), log_json=False,
                        admin_api_key="secret-key")
    for key, value in original.to_env().items():
        monkeypatch.setenv(key, value)
    rebuilt = Settings()
    assert rebuilt.model_dump() == original.model_dump()
    assert rebuilt.admin_api_key.get_secret_value() == "secret-key"


def test_every_postgresql_connection_path_bounds_its_connect_wait():
    # A host that stops answering must fail as an outage within seconds, not after the OS's TCP timeout.
    from shared.adapters.postgres.pool import psycopg_conninfo

    settings = Settings(database_schema="s1", database_connect_timeout_s=7)
    assert settings.sqlalchemy_connect_args == {"connect_timeout": 7,
                                                "options": "-ctimezone=UTC -csearch_path=s1"}
    assert psycopg_conninfo(settings)[1]["connect_timeout"] == 7
    assert psycopg_conninfo(settings)[1]["options"] == settings.sqlalchemy_connect_args["options"]
