"""Screenshots of what the demo billed, taken in a headless Chromium (Debian's `chromium`, driven by
Playwright, as the browser tests do): the operator console's overview and one customer's page, and that
customer's usage page opened through a portal link made with the API.

The customer shown is the one with the most metered usage. The usage page shows the current period, so it
is taken twice: at the end of January (the month's usage, before the period closes) and at the end of the
demo. A screenshot that cannot be taken (no browser on this machine, a page that does not load) is
reported by the caller; it never fails the billing demo.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import sqlalchemy as sa

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 900}


def showcase_customer(engine: sa.Engine) -> str | None:
    """The customer with the most hourly usage buckets on a live subscription (the richest usage page)."""
    with engine.connect() as conn:
        return conn.execute(sa.text("""
            SELECT s.customer_id FROM usage_aggregates a JOIN subscriptions s USING (subscription_id)
            WHERE s.status <> 'cancelled' AND a.meter_id <> 'reports'
            GROUP BY s.customer_id ORDER BY count(*) DESC, s.customer_id LIMIT 1""")).scalar()


def portal_path(base_url: str, admin_key: str, customer_id: str) -> str:
    """A fresh one-hour link to the customer's usage page, made through the API (its path)."""
    response = httpx.post(f"{base_url}/v1/customers/{customer_id}/portal-links", json={"expires_in": 3600},
                          headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    response.raise_for_status()
    url: str = response.json()["url"]
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def take(base_url: str, admin_key: str, customer_id: str, out_dir: Path, *, console: bool,
         usage_name: str = "usage.png") -> list[Path]:
    """Write the usage page (and, with `console`, the overview and the customer's console page) as PNGs."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    usage = portal_path(base_url, admin_key, customer_id)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            context = browser.new_context(base_url=base_url, viewport=VIEWPORT)  # type: ignore[arg-type]
            context.set_default_timeout(60_000)
            page = context.new_page()
            shots = [(usage, usage_name)]
            if console:
                page.goto("/console/login?next=/console/")
                page.fill("input[name=api_key]", admin_key)
                page.click("form.login button[type=submit]")
                page.wait_for_load_state()
                shots = [("/console/", "overview.png"), (f"/console/customers/{customer_id}", "customer.png"),
                         *shots]
            for path, name in shots:
                response = page.goto(path)
                if response is None or response.status != 200:
                    raise RuntimeError(f"{path.split('/portal/')[0] or '/portal'} answered "
                                       f"{response.status if response else 'nothing'}")
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(out_dir / name), full_page=True)
                written.append(out_dir / name)
        finally:
            browser.close()
    return written
