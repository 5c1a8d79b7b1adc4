"""The billing worker's use cases, one function per message type, grouped by area:

- `subscriptions.py`: create, change plan, change seats, cancel, pause, resume, end trial
- `periods.py`: close a period (the billing run)
- `drafts.py`: finalise a draft invoice (its grace ended, or asked now), with the usage received meanwhile
- `credits.py`: grant and expire credits
- `payments.py`: payment succeeded / failed, retry, dunning give-up, update payment method
- `customers.py`: the provider deleted a customer

One contract: ``apply(uow, envelope, payload, at) -> result | None``. A use case loads aggregates through the
unit of work, asks the domain, and records what changed on the unit of work (which writes it at commit).
It returns the `applied` outcome's extra result (commands), raises `Ignored` when the message no longer applies,
`Refused` / a `DomainError` when it is refused, `MessageRejected` when it can never apply (DLQ).
The message bus (messagebus.py) runs a run of messages of one type through one unit of work; the `Handler`
around each use case says what to load for the whole run first (`prefetch`) and which messages change nothing
and only get an outcome (`precheck`). The table type -> Handler is built in bootstrap.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.contracts.envelope import Envelope

Apply = Callable[[BillingUnitOfWork, Envelope, Any, datetime], "dict[str, Any] | None"]
Prefetch = Callable[[BillingUnitOfWork, Sequence[tuple[Envelope, Any]], datetime], None]
Precheck = Callable[[BillingUnitOfWork, Any, datetime], None]


@dataclass(frozen=True)
class Handler:
    """A use case and what the bus needs to know to run many of its messages at once.

    `prefetch(uow, messages, at)` loads what the whole run needs in a few set-based reads (a billing run's
    usage and ledgers, the invoices a run of payment outcomes is about). `precheck(uow, payload, at)` raises
    `Ignored` or a refusal for a message that would change nothing, so the run goes on without rolling back.
    `answers`: a command, whose outcome is stored for the edge; False for payment outcomes (payments.v1), which
    nobody waits for and which go to the DLQ when the domain refuses them.
    """

    apply: Apply
    prefetch: Prefetch | None = None
    precheck: Precheck | None = None
    answers: bool = True

    @property
    def name(self) -> str:
        return getattr(self.apply, "__name__", repr(self.apply))


def load_invoices_of(uow: BillingUnitOfWork, messages: Sequence[tuple[Envelope, Any]], at: datetime) -> None:
    """Prefetch: the invoices a run of payment messages is about, in one read."""
    uow.load_invoices([str(p.invoice_id) for _, p in messages])
