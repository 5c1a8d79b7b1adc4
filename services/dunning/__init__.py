"""The dunning service: payment failures, retries, reminders and cancellation, on the billing clock.

Dunning decides, the billing worker acts. This service consumes ``billing-events.v1``
(``invoice.payment_failed``, ``invoice.paid``, ``invoice.voided``, ``invoice.uncollectible``,
``subscription.status_changed``, ``payment_method.updated``), keeps one case per unpaid invoice, asks the
domain policy (``shared.domain.dunning``) what is due, and answers with ``payment.retry`` and
``dunning.give_up`` commands on ``commands.v1`` (keyed by subscription_id) and customer notifications.

How the guarantees hold without faust's exactly-once mode
---------------------------------------------------------
Faust's exactly-once (Kafka transactions) stops at Kafka, and our effects live in PostgreSQL and in the
customer's mailbox, so the app runs ``at_least_once`` and gets its guarantees from three rules:

1. **Idempotent handlers on event_id.** Every consumed event inserts its ``event_id`` into
   ``dunning_inbox`` in the same transaction as its effects. A redelivered event (a crash before the
   offset commit, a rebalance) finds the row and does nothing.
2. **Unique action keys.** Every action the domain offers has a stable key per case (``retry:3``,
   ``notify:1``, ``retry:payment_method:1``, ``give_up``, ``notify:final``). ``dunning_actions`` is unique
   on (case_id, action_key); the outgoing command (an ``outbox`` row with an event_id derived from the
   key) and the notification row (id derived from the key) are written only when the action row was
   inserted, in the same transaction. A restart, a timer running on two instances, or a replay can
   therefore never schedule a retry or decide a notification twice.
3. **Commit, then ack.** The agent acknowledges an event only after the handler's transaction committed;
   a crash in between redelivers the event, which rule 1 absorbs.

Commands reach the worker through the transactional outbox (the worker's relay publishes rows of any
topic): no command is lost if the process dies after commit, and none exists for a rolled-back
decision. Notifications are delivered after commit by the dispatcher (an email cannot be rolled back):
delivery is at-least-once with the notification id as the webhook's ``Billing-Event-Id`` and the email's
Message-ID, so receivers drop the rare resend after a crash between sending and recording it.

Time comes from the billing clock (``DatabaseClock`` when ``BILLING_CLOCK=simulated``), so 14 simulated days
pass in seconds. The timer asks the domain for due actions at each of a case's wake-up instants in turn, up
to the clock's now, never straight at the now: a clock jump (or an outage) replays the schedule in
billing-time order, each retry after the previous one's outcome, the give-up last; and ``next_wake_at`` is
the case's position, which the worker's scheduler reads to hold a period close behind what dunning has not
done yet. Retries also wait while the invoice has a payment attempt with an unknown outcome; the
reconciliation job asks the provider and reports the answer on ``payments.v1`` for the worker to apply.

Outages (``outages.py``): every timer and the event agent wait out a PostgreSQL, Kafka or provider outage
with capped backoff, logging it once when it starts and once when it ends; an event is acknowledged only
after its transaction committed, so nothing is lost; ``GET /readyz`` (with ``BILLING_DUNNING_WEB_PORT``)
answers 503 naming the jobs that wait.
"""
