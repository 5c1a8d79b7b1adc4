"""The short fault suite inside `make test` (the full one is `make chaos`): on the shared stack, in this
module's own schema and topic prefix, the real edge, worker and dunning processes take

- one kill -9 of the worker during a billing run of subscriptions and usage written straight to Kafka;
- the poison corpus (issue 12's cases and hypothesis-generated envelopes and bytes) on usage.v1,
  commands.v1, payments.v1 and billing-events.v1.

Outages (stopping Kafka or PostgreSQL) need a private stack and stay in `make chaos`. Each check of a
scenario is its own test, named after what must hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from chaos.load import Acknowledged, onboard
from chaos.pipeline import ADMIN_KEY, Pipeline, with_chaos_options
from chaos.scenarios import ScenarioResult, World, kill_worker_during_billing_run, poison_corpus
from shared.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture(scope="module")
def world(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    pipeline = Pipeline(with_chaos_options(settings, uuid.uuid4().hex[:8]), tmp_path_factory.mktemp("chaos-logs"))
    pipeline.start()
    try:
        ledger = Acknowledged()
        # The eighth user's card declines: dunning gives up on it before the period closes.
        customers = onboard(pipeline.base_url, ADMIN_KEY, ledger, users=8, orgs=1)
        pipeline.quiescence().wait(timeout=60)
        pipeline.advance_clock(hours=1)
        yield World(pipeline, customers, ledger)
    finally:
        pipeline.stop()


@pytest.fixture(scope="module")
def billing_run_with_a_kill(world: World) -> ScenarioResult:
    # NOTE: the timeouts bound a wait for quiet, they time nothing: on a loaded 2-core machine the billing run
    # after the kill took more than 60 s to settle (it is about 20 s alone), and the checks then failed.
    return kill_worker_during_billing_run(world, subscriptions=150, kills=1, settle_timeout=180)


@pytest.fixture(scope="module")
def poison(world: World, billing_run_with_a_kill: ScenarioResult) -> ScenarioResult:
    # After the kill: a corpus that stops the worker must not also fail the kill's checks.
    return poison_corpus(world, generated_per_topic=12, settle_timeout=120)


def _explain(result: ScenarioResult) -> str:
    return "\n".join([f"failed: {result.failed_checks()}", *result.notes])


KILL_CHECKS = ["pipeline quiet again (every message consumed)", "0 acknowledged usage lost",
               "0 usage double-counted", "0 duplicate invoices", "<= 1 successful charge per invoice",
               "demo audit invariants hold", "every service process alive",
               "every subscription not cancelled has its January invoice",
               "no period billed after dunning's earlier give-up (due events act in order)"]
POISON_CHECKS = ["every service process alive", "pipeline quiet again (every message consumed)",
                 "a valid event after the corpus is stored", "0 acknowledged usage lost",
                 "every case that must be refused is dead-lettered", "no refused usage case stored",
                 "0 usage double-counted", "demo audit invariants hold"]


@pytest.mark.parametrize("check", KILL_CHECKS)
def test_kill_9_of_the_worker_during_a_billing_run(billing_run_with_a_kill: ScenarioResult, check: str) -> None:
    assert billing_run_with_a_kill.checks[check], _explain(billing_run_with_a_kill)


@pytest.mark.parametrize("check", POISON_CHECKS)
def test_the_poison_corpus_on_every_consumed_topic(poison: ScenarioResult, check: str) -> None:
    assert poison.checks[check], _explain(poison)
