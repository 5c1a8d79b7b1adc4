"""The factories every composition root shares (shared/bootstrap.py): the settings choose the adapter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from shared.adapters.clock import DatabaseClock, SystemClock
from shared.adapters.notify.log import LogNotifier
from shared.adapters.notify.smtp import SmtpNotifier
from shared.adapters.notify.webhook import WebhookNotifier
from shared.adapters.payments.simulated import InMemoryProviderRecord, PostgresProviderRecord, SimulatedGateway
from shared.adapters.payments.stripe_gateway import StripeGateway
from shared.bootstrap import build_clock, build_engine, build_gateway, build_notifier
from shared.config import Settings
from shared.domain.dunning import DunningPolicy

pytestmark = pytest.mark.unit


@pytest.fixture
def engine() -> sa.Engine:
    return build_engine(Settings(), pool_size=1)  # connects to nothing until used


class _RecordingClock(DatabaseClock):
    ensured = 0

    def ensure(self) -> datetime:
        type(self).ensured += 1
        return self._start


def test_a_real_clock_is_the_system_clock(engine):
    assert isinstance(build_clock(Settings(clock="real"), engine), SystemClock)


def test_a_simulated_clock_starts_at_the_configured_instant_and_is_not_read_until_asked(engine):
    settings = Settings(clock="simulated", simulated_clock_start="2026-03-01T00:00:00+00:00")
    _RecordingClock.ensured = 0
    clock = build_clock(settings, engine, simulated=_RecordingClock)
    assert isinstance(clock, _RecordingClock)
    assert clock._start == datetime(2026, 3, 1, tzinfo=UTC)
    assert _RecordingClock.ensured == 0
    build_clock(settings, engine, simulated=_RecordingClock, ensure=True)
    assert _RecordingClock.ensured == 1


def test_the_simulated_gateway_keeps_its_record_in_postgresql_when_given_an_engine(engine):
    settings = Settings(payment_gateway="simulated")
    with_engine = build_gateway(settings, engine)
    without = build_gateway(settings)
    assert isinstance(with_engine, SimulatedGateway) and isinstance(without, SimulatedGateway)
    assert isinstance(with_engine.record, PostgresProviderRecord)
    assert isinstance(without.record, InMemoryProviderRecord)


def test_the_stripe_gateway_is_chosen_by_the_settings(engine):
    assert isinstance(build_gateway(Settings(payment_gateway="stripe"), engine), StripeGateway)


def test_the_notifier_is_chosen_by_the_settings():
    assert isinstance(build_notifier(Settings()), LogNotifier)
    assert isinstance(build_notifier(Settings(notifier="smtp")), SmtpNotifier)
    assert isinstance(build_notifier(Settings(notifier="webhook", notify_webhook_url="http://127.0.0.1:1/h")),
                      WebhookNotifier)
    with pytest.raises(ValueError, match="BILLING_NOTIFY_WEBHOOK_URL"):
        build_notifier(Settings(notifier="webhook"))


def test_the_dunning_schedule_defaults_are_the_domains():
    settings, policy = Settings(), DunningPolicy()
    assert (settings.dunning_retry_days, settings.dunning_notify_days, settings.dunning_give_up_day) == \
        (policy.retry_offsets_days, policy.notify_offsets_days, policy.give_up_after_days)
