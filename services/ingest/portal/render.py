"""HTML of the customer usage page and of its refusals (Jinja, autoescaped), on the operator console's base
layout and stylesheet (without its menu) with the console's server-side SVG charts
(`services.ingest.console.charts`).

Nothing is loaded from elsewhere (the console's stylesheet and htmx come from this edge), so the page is
served under a same-origin policy and with `Referrer-Policy: no-referrer`: its URL is the credential, and
a link followed from it must not carry it away.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import jinja2

from services.ingest.console import charts
from services.ingest.console.charts import Series, line_chart
from services.ingest.service_layer.portal import DailyUsage, PortalPage, PortalSubscription
from shared.domain.money import Money

# The portal's own templates first, then the console's (its base layout, stylesheet and chart figure).
CONSOLE_TEMPLATES = Path(charts.__file__).resolve().parent / "templates"
_ENV = jinja2.Environment(loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                                      jinja2.FileSystemLoader(CONSOLE_TEMPLATES)]),
                          autoescape=True, trim_blocks=True, lstrip_blocks=True)
_ENV.globals.update(prefix="/console", session=None)  # the console's layout, without its operator menu


def money(amount_minor: int | None, currency: str) -> str:
    return "" if amount_minor is None else Money(amount_minor, currency).format()


def quantity(value: Decimal | int | None) -> str:
    """12345.500 -> '12,345.5'; None -> ''."""
    if value is None:
        return ""
    text = f"{Decimal(value).normalize():,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


_ENV.filters["money"] = money
_ENV.filters["quantity"] = quantity


@dataclass(frozen=True)
class MeterRow:
    meter_id: str
    unit: str
    used: str
    included_left: str
    charge: str


def _meter_rows(sub: PortalSubscription) -> list[MeterRow]:
    rows = []
    cur = sub.usage.currency
    for m in sub.usage.meters:
        if m.credit_remaining_minor is not None:
            left = money(max(m.credit_remaining_minor - (m.credit_applied_minor or 0), 0), cur)
        elif m.credit_remaining_units is not None:
            units_left = max(m.credit_remaining_units - (m.credit_applied_units or 0), Decimal(0))
            left = f"{quantity(units_left)} {m.unit or ''}"
        else:
            left = "none"
        rows.append(MeterRow(m.meter_id, m.unit or "", quantity(m.quantity), left.strip(),
                             money(m.estimated_charge_minor, cur)))
    return rows


def daily_chart(daily: DailyUsage, unit: str) -> str:
    labels = [d.strftime("%b %d") for d in daily.days]
    return line_chart(labels, [Series(daily.meter_id, [float(q) for q in daily.quantities])],
                      title=f"{daily.meter_id} per day ({unit})" if unit else f"{daily.meter_id} per day")


def render_page(page: PortalPage, token: str) -> str:
    subscriptions = []
    for sub in page.subscriptions:
        units = {m.meter_id: m.unit or "" for m in sub.usage.meters}
        subscriptions.append({
            "usage": sub.usage, "seats": sub.seats, "meters": _meter_rows(sub),
            "charts": [(d.meter_id, daily_chart(d, units.get(d.meter_id, ""))) for d in sub.daily
                       if any(d.quantities)]})
    spend = None
    if page.spend is not None:
        s = page.spend.summary()
        spend = {"included": s.included.format(), "included_left": s.included_remaining.format(),
                 "usage_cost": s.usage_cost.format(), "spend": s.spend.format(),
                 "cap": s.cap.format() if s.cap is not None else "no cap",
                 "cap_left": s.cap_remaining.format() if s.cap_remaining is not None else "",
                 "percent": (min(100, round(100 * s.spend.amount_minor / s.cap.amount_minor))
                             if s.cap is not None and s.cap.amount_minor > 0 else None),
                 "blocked": s.blocked}
    return _ENV.get_template("portal.html").render(page=page, token=token, subscriptions=subscriptions,
                                                   spend=spend)


def render_refusal(status: int, title: str, detail: str) -> str:
    return _ENV.get_template("refused.html").render(status=status, title=title, detail=detail)
