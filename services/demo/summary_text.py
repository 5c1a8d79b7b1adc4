"""The demo's printed summary: one readable line of text per topic, from `summary.json`'s figures.

Pure (a dict in, (label, text) rows out) so the wording is unit-tested on a real run's summary. Counts get
thousands separators, money its currency, and no cell is a JSON document.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from services.tables import number, words
from shared.domain.money import Money

Rows = list[tuple[str, str]]

_NOTICES = {"payment_failed": "reminders", "payment_method_required": "card requests",
            "subscription_cancelled": "cancellations"}
_CHANGES = {"upgrade": "upgrades", "downgrade": "downgrades", "seats": "seat changes", "cancel": "cancellations"}


def _n(value: Any) -> str:
    return number(int(value or 0))


def _counts(counts: Mapping[str, Any], *, order_by_count: bool = True) -> str:
    """``{"paid": 1233, "void": 3}`` -> ``1,233 paid, 3 void`` (largest first)."""
    items = sorted(counts.items(), key=lambda kv: -int(kv[1] or 0)) if order_by_count else list(counts.items())
    return ", ".join(f"{_n(v)} {words(k)}" for k, v in items)


def _money(amount_minor: Any, currency: str | None) -> str:
    return Money(int(amount_minor or 0), currency).format() if currency else f"{_n(amount_minor)} (minor units)"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _customers(s: Mapping[str, Any]) -> str:
    c, subs = s["customers"], s["subscriptions"]
    kinds = ", ".join(f"{_n(n)} {kind}s" for kind, n in sorted(c["by_kind"].items()))
    text = f"{_n(c['total'])} ({kinds}); subscriptions " + ", ".join(
        f"{words(status)} {_n(n)}" for status, n in sorted(subs["by_status"].items(), key=lambda kv: -kv[1]))
    versions = s.get("catalog_and_credits", {}).get("subscriptions_on_a_new_version") or {}
    if versions:
        text += " (" + ", ".join(f"{_n(n)} on {plan}" for plan, n in versions.items()) + ")"
    return text


def _invoices(s: Mapping[str, Any]) -> str:
    return (f"{_n(s['invoices_total'])}: {_counts(s['invoices_by_status'])} "
            f"({_counts(s.get('invoices_by_kind', {}))})")


def _usage(s: Mapping[str, Any]) -> str:
    u = s["usage_events"]
    by_meter = u.get("by_meter") or {}
    stored = f"stored {_n(u['stored'])}"
    if by_meter:
        stored += " (" + ", ".join(f"{meter} {_n(n)}" for meter, n in sorted(by_meter.items())) + ")"
    return (f"generated {_n(u['generated'])}; accepted over HTTP {_n(u['sent_http_accepted'])} and via the SDK "
            f"{_n(u['sent_sdk_kafka'])}; rejected {_n(u['rejected'])}; parked {_n(u['parked_unmatched'])} "
            f"(unknown customer); report-credit events {_n(u['report_credit_events'])}; {stored}; "
            f"deduplicated {_n(u['deduped'])}")


def _reports(s: Mapping[str, Any]) -> str:
    r = s["reports"]
    prefix = "reports_denied_"
    reasons = {k.removeprefix(prefix).removesuffix("_reached"): v for k, v in r.items() if k.startswith(prefix)}
    text = f"allowed {_n(r.get('reports_allowed'))}; denied {_n(r.get('reports_denied'))}"
    if reasons:
        text += " (" + ", ".join(f"{words(k)} {_n(v)}" for k, v in reasons.items()) + ")"
    return text + f"; top-ups {_n(r.get('top_ups'))}"


def _changes(s: Mapping[str, Any]) -> str:
    c = s.get("changes", {})
    parts = []
    for kind, name in _CHANGES.items():
        ok, refused = c.get(f"change_{kind}_ok", 0), c.get(f"change_{kind}_refused", 0)
        if ok or refused:
            parts.append(f"{name} {_n(ok)}" + (f" ({_n(refused)} refused)" if refused else ""))
    return ", ".join(parts) + f"; cards replaced {_n(c.get('cards_replaced'))}"


def _dunning(s: Mapping[str, Any]) -> str:
    d = s["dunning"]
    cases = d.get("cases_by_status", {})
    notices = d.get("notifications_by_kind", {})
    text = (f"recovered {_n(cases.get('recovered'))} ({_n(d.get('cards_replaced'))} cards replaced, "
            f"{_n(d.get('paid_at_provider_without_webhook'))} paid on the provider's page without a webhook), "
            f"given up {_n(cases.get('given_up'))}")
    others = {k: v for k, v in cases.items() if k not in ("recovered", "given_up")}
    if others:
        text += ", " + ", ".join(f"{words(k)} {_n(v)}" for k, v in others.items())
    if notices:
        text += "; " + ", ".join(f"{_NOTICES.get(k, words(k))} {_n(v)}" for k, v in notices.items())
    return text + f"; retries requested {_n(d.get('retries_requested'))}"


def _reconciliation(s: Mapping[str, Any]) -> str:
    d = s["dunning"]
    return (f"{_n(d.get('invoices_recovered_by_reconciliation'))} invoices found paid at the provider and settled, "
            f"of {_n(d.get('paid_at_provider_without_webhook'))} paid there without a webhook")


def _catalog(s: Mapping[str, Any]) -> str:
    c = s.get("catalog_and_credits", {})
    parts = []
    if c.get("catalog_coupons_created"):
        parts.append(f"{_n(c['catalog_coupons_created'])} coupon made through the API "
                     f"(LAUNCH15: {_n(c.get('launch_coupon_redemptions'))} redemptions)")
    versioned = {plan: n for plan, n in (c.get("plan_versions") or {}).items() if n > 1}
    if versioned:
        parts.append(", ".join(f"{plan} at version {n}" for plan, n in versioned.items())
                     + f" ({_n(c.get('catalog_migrations_scheduled'))} subscribers migrated at their period end)")
    purchases = c.get("credit_purchases_by_status") or {}
    if c.get("credit_purchases_made") or purchases:
        parts.append(f"{_n(c.get('credit_purchases_made'))} prepaid credit purchases ({_counts(purchases)})")
    return "; ".join(parts) or "no catalog change"


def _credits(s: Mapping[str, Any]) -> str:
    parts = []
    for g in s.get("credits", []):
        cur = g.get("currency")
        if g.get("granted_minor") is not None:
            figures = [f"{_money(g.get(k + '_minor'), cur)} {k}" for k in ("granted", "consumed", "expired")
                       if g.get(k + "_minor") is not None]
        else:
            figures = [f"{number(_decimal(g.get(k + '_units')))} {k}" for k in ("granted", "consumed")
                       if g.get(k + "_units") is not None]
        parts.append(f"{g['meter_id']} " + ", ".join(figures))
    return "; ".join(parts)


def _decimal(value: Any) -> Decimal | int:
    return Decimal(str(value)).quantize(Decimal("0.01")) if "." in str(value) else int(value)


def _corrections(s: Mapping[str, Any], currency: str | None) -> str:
    c = s["corrections"]
    voided_by_operator = c.get("voided", 0)
    return (f"{_n(voided_by_operator)} invoice voided by an operator ({_n(c.get('invoices_voided'))} void in all); "
            f"{_n(c.get('credit_notes'))} credit notes: {_n(c.get('credit_notes_refunded'))} refunded "
            f"({_money(c.get('refunded_minor'), currency)}, {_n(c.get('refunds_succeeded'))} refunds succeeded), "
            f"{_n(c.get('credit_notes_to_balance'))} credited to balances "
            f"({_money(c.get('balances_held_minor'), currency)} held); "
            f"{_n(c.get('one_off_invoices'))} one-off invoices; "
            f"{_n(c.get('final_invoices_on_cancel_now'))} final invoices on cancel-now; "
            f"{_n(c.get('late_usage_adjustment_lines'))} late-usage adjustment lines")


def _webhooks(s: Mapping[str, Any]) -> str:
    w = s["webhooks"]
    r = w.get("receiver", {})
    return (f"{_counts(w.get('by_status', {}))} ({_n(w.get('attempts'))} attempts); the receiver got "
            f"{_n(r.get('events_received'))} events with valid signatures ({_n(r.get('bad_signatures'))} bad), "
            f"answered 503 to the first {_n(r.get('answered_503_while_down'))} requests: retried; "
            f"{_n(w.get('still_pending'))} pending")


def _throughput(s: Mapping[str, Any]) -> str:
    t = dict(s["throughput"])
    rate = t.pop("usage_events_per_s_during_month", None)
    wall = t.pop("wall_s", None)
    phases = ", ".join(f"{words(k.removesuffix('_s'))} {_duration(v)}" for k, v in t.items())
    text = f"{rate:,} usage events/s during the month; " if rate is not None else ""
    return text + phases + (f"; wall time {_duration(wall)}" if wall is not None else "")


def _http(s: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('http_')}: {_n(v)}" for k, v in sorted(s.get("http", {}).items()))


def _invariants(s: Mapping[str, Any]) -> str:
    inv = s["invariants"]
    failed = {k: v for k, v in inv.items() if v is not True}
    if not failed:
        return f"all {len(inv)} true: " + ", ".join(words(k) for k in inv)
    return (f"{len(inv) - len(failed)} of {len(inv)} true; FAILED: "
            + ", ".join(f"{words(k)} ({_n(v)} violations)" for k, v in failed.items()))


def _screenshots(screens: Mapping[str, Any]) -> str:
    written = [str(p).rsplit("/", 1)[-1] for p in screens.get("written", [])]
    text = (f"{len(written)} written under var/demo/screens/ ({', '.join(written)}; customer "
            f"{screens.get('customer_id')})" if written else "none written")
    errors = screens.get("errors") or []
    return text + ("; not taken: " + "; ".join(errors) if errors else "")


def summary_rows(s: Mapping[str, Any]) -> Rows:
    """The summary as (label, text) rows, in the order they are printed."""
    revenue: Mapping[str, Mapping[str, int]] = s.get("revenue", {})
    currency = next(iter(revenue)) if len(revenue) == 1 else None
    rows: Rows = [("customers", _customers(s)), ("invoices", _invoices(s))]
    for cur, figures in revenue.items():
        rows.append((f"revenue {cur}", ", ".join(f"{words(k)} {Money(int(v or 0), cur).format()}"
                                                 for k, v in figures.items())))
    rows += [("usage events", _usage(s)), ("credits", _credits(s)), ("reports", _reports(s)),
             ("changes", _changes(s)),
             ("payments", "attempts: " + _counts(s.get("payments", {}).get("attempts_by_status", {}))),
             ("dunning", _dunning(s)), ("reconciliation", _reconciliation(s)), ("catalog", _catalog(s)),
             ("corrections", _corrections(s, currency)), ("webhooks", _webhooks(s)),
             ("commands rejected", _n(s.get("commands_rejected"))), ("http answers", _http(s)),
             ("throughput", _throughput(s)), ("invariants", _invariants(s))]
    if "screenshots" in s:
        rows.append(("screenshots", _screenshots(s["screenshots"])))
    return rows
