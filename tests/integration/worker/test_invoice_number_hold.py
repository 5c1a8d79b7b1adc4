"""The invoice-number counter is locked as late as the batch transaction allows (issue 17).

Numbers stay gapless because the counter row's lock is held until the batch commits; every other batch of the
issuer (the other worker's) waits on it meanwhile. So a run writes the state that names no invoice number
(subscriptions, ledgers, periods, history, outcomes) before it takes the numbers: while those statements run,
another transaction can still lock the counter row. Before, the range was taken first and the row stayed locked
through every write of the run."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from services.billing_worker.adapters.billing_repository import DEFAULT_INVOICE_PREFIX
from services.billing_worker.bootstrap import billing_handlers, message_bus, sql_unit_of_work
from services.billing_worker.service_layer.model import DEFAULT_ISSUER
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.postgres.schema.billing import invoice_number_sequences
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import ClosePeriod, CreateSubscription

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
CATALOG = load_default_catalog()
BUS = message_bus(billing_handlers())
UOW = sql_unit_of_work(CATALOG)


def _counter_free(probe: sa.Connection) -> bool:
    """Whether another transaction could lock the issuer's counter row right now."""
    with probe.begin():
        try:
            probe.execute(sa.text("SET LOCAL lock_timeout = '50ms'"))
            probe.execute(sa.select(invoice_number_sequences.c.issuer)
                          .where(invoice_number_sequences.c.issuer == DEFAULT_ISSUER).with_for_update(nowait=True))
            return True
        except sa.exc.OperationalError:
            return False


def test_a_run_writes_its_state_before_it_locks_the_invoice_number_counter(engine: sa.Engine) -> None:
    with engine.begin() as conn:  # the counter row exists (as it does after the first invoice)
        conn.execute(insert(invoice_number_sequences).values(issuer=DEFAULT_ISSUER, prefix=DEFAULT_INVOICE_PREFIX,
                                                             next_number=1)
                     .on_conflict_do_nothing(index_elements=["issuer"]))
    tag = uuid.uuid4().hex[:8]
    subs = [(f"sub_{tag}_{i:03d}", f"cus_{tag}_{i:03d}") for i in range(30)]
    seen: list[tuple[str, bool]] = []  # (statement, counter free when it was sent)
    with engine.connect() as probe, engine.connect() as conn:
        creates = [CreateSubscription(subscription_id=s, customer_id=c, plan_id="pro", currency="USD",
                                      payment_method_id="pm_card_visa", tax_rate_bps=800) for s, c in subs]
        with conn.begin():  # committed: the creation's numbers are taken and released; the close is watched
            BUS.handle(UOW(conn), [(new_envelope("subscription.create", p.model_dump(mode="json"),
                                                 producer="test", occurred_at=JAN_1), p) for p in creates], JAN_1)

        def watched(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            seen.append((" ".join(statement.split())[:80], _counter_free(probe)))

        closes = [ClosePeriod(subscription_id=s, customer_id=c, period_end=FEB_1) for s, c in subs]
        sa.event.listen(conn, "before_cursor_execute", watched)
        try:
            with conn.begin() as tx:
                BUS.handle(UOW(conn), [(new_envelope("period.close", p.model_dump(mode="json"), producer="test",
                                                     occurred_at=FEB_1), p) for p in closes], FEB_1)
                numbered = conn.execute(sa.text(
                    "SELECT count(*) FROM invoices WHERE subscription_id = ANY(:ids) AND period_end = :end "
                    "AND kind = 'period_close' AND number IS NOT NULL"),
                    {"ids": [s for s, _ in subs], "end": FEB_1}).scalar_one()
                tx.rollback()
        finally:
            sa.event.remove(conn, "before_cursor_execute", watched)
    assert numbered == len(subs)
    first_locked = next(i for i, (_, free) in enumerate(seen) if not free)
    assert "invoice_number_sequences" in seen[first_locked - 1][0], seen[first_locked - 1]
    before = " | ".join(s for s, _ in seen[:first_locked])
    for state in ("UPDATE subscriptions", "credit_grants", "subscription_periods", "subscription_history",
                  "command_outcomes"):
        assert state in before, (state, [s for s, _ in seen])
    assert all(not free for _, free in seen[first_locked:])  # held to the end: what keeps numbers gapless
