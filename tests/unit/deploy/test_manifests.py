"""The deploy manifests and the compose file agree with the code: settings names, ports, topics."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared.adapters.kafka.admin import declared_topics
from shared.config import Settings
from shared.contracts import topics

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
SETTING_NAMES = {f"BILLING_{name.upper()}" for name in Settings.model_fields}


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] == kind}


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_every_variable_in_the_configmap_and_secret_is_a_setting_the_code_reads():
    keys = set(by_kind("ConfigMap")["billing-config"]["data"]) | set(by_kind("Secret")["billing-secrets"]["stringData"])
    assert keys <= SETTING_NAMES, keys - SETTING_NAMES


def test_every_variable_in_the_compose_file_is_a_setting_the_code_reads():
    env = compose()["x-billing-env"]
    assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES


def test_the_edge_listens_where_the_manifests_send_traffic():
    http_port = int(by_kind("ConfigMap")["billing-config"]["data"]["BILLING_HTTP_PORT"])
    container = by_kind("Deployment")["billing-ingest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == http_port
    assert compose()["services"]["ingest"]["ports"] == [f"{compose()['x-billing-env']['BILLING_HTTP_PORT']}:"
                                                         f"{compose()['x-billing-env']['BILLING_HTTP_PORT']}"]


def test_each_deployment_runs_a_service_command_the_cli_has():
    from services.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for deployment in by_kind("Deployment").values():
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[0] in commands
    for service in ("ingest", "billing-worker", "dunning", "migrate"):
        assert compose()["services"][service]["command"][0] in commands


def test_billing_worker_replicas_do_not_exceed_the_partitions_they_share():
    replicas = by_kind("Deployment")["billing-worker"]["spec"]["replicas"]
    declared = declared_topics()
    for name in (topics.USAGE, topics.COMMANDS, topics.PAYMENTS):
        assert replicas <= declared[name]["partitions"]
    assert by_kind("PodDisruptionBudget")["billing-worker"]["spec"]["maxUnavailable"] == 1


def test_the_declared_topics_are_exactly_the_ones_the_code_names():
    declared = set(declared_topics())
    expected = set(topics.ALL) | {topics.dlq(t) for t in topics.WITH_DLQ}
    assert declared == expected


def test_the_edge_has_an_autoscaler_and_the_worker_a_disruption_budget():
    assert by_kind("HorizontalPodAutoscaler")["billing-ingest"]["spec"]["scaleTargetRef"]["name"] == "billing-ingest"
    assert "billing-worker" in by_kind("PodDisruptionBudget")
