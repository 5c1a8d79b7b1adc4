"""The simulated provider (in-memory record) honours the whole scripted PaymentGateway contract."""

from __future__ import annotations

import pytest

from shared.adapters.payments.port import ChargeStatus
from shared.adapters.payments.simulated import InMemoryProviderRecord, SimulatedGateway
from tests.unit.payments.gateway_contract import ScriptedGatewayContract, request_for


class TestSimulatedGatewayInMemory(ScriptedGatewayContract):
    @pytest.fixture
    def gateway(self) -> SimulatedGateway:
        return SimulatedGateway(InMemoryProviderRecord())


def test_a_lost_answer_charged_again_with_the_same_key_moves_money_once() -> None:
    record = InMemoryProviderRecord()
    gateway = SimulatedGateway(record)
    request = request_for("pm_sim_timeout_after_success")
    first = gateway.charge(request)
    again = gateway.charge(request)
    assert first.status is ChargeStatus.UNKNOWN
    assert again.status is ChargeStatus.SUCCEEDED
    assert [c.succeeded for c in record.charges()] == [True]
