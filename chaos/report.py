"""The table every run prints (and writes to var/chaos/results.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from chaos.scenarios import ScenarioResult

console = Console(width=200)


def _per_period(figures: dict[str, int]) -> str:
    """Period-close invoices per billing period (the other kinds are in results.json)."""
    closes = {key.split(" ")[0]: n for key, n in figures.items() if key.endswith(" period_close")}
    return " ".join(f"{period}: {n}" for period, n in sorted(closes.items())) or "-"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def row(result: ScenarioResult) -> list[str]:
    f = result.figures
    recovery = ("/".join(_seconds(result.recovery_s.get(k)) for k in ("edge", "worker", "dunning"))
                if result.recovery_s else "-")
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(result.server_errors.items())) or "0"
    dlq = ", ".join(f"{k.split('.')[0]} {v}" for k, v in result.dead_lettered.items() if v) or "0"
    verdict = ("[yellow]SKIPPED[/yellow]" if result.skipped else "[green]PASS[/green]" if result.passed
               else f"[red]FAIL ({len(result.failed_checks())})[/red]")
    if f is None:
        return [result.name, "-", "-", "-", "-", "-", "-", dlq, recovery, errors, verdict]
    return [result.name, f"{f.acknowledged_usage} / {f.stored_usage}", str(len(f.lost_usage)), str(f.double_counted),
            str(f.duplicate_invoices), _per_period(f.invoices_per_period), str(f.max_successful_charges_per_invoice),
            dlq, recovery, errors, verdict]


def print_table(results: list[ScenarioResult]) -> None:
    table = Table(title="Fault suite (make chaos)", show_lines=True)
    for header in ("scenario", "usage acked / stored", "lost", "double-counted", "dup invoices",
                   "period-close invoices per period", "max charges / invoice", "dead-lettered",
                   "recover s edge/worker/dunning", "5xx seen", "result"):
        table.add_column(header, overflow="fold")
    for result in results:
        table.add_row(*row(result))
    console.print(table)
    for result in results:
        for name in result.failed_checks():
            console.print(f"[red]FAILED[/red] {result.name}: {name}")
        for note in result.notes:
            console.print(f"  {result.name}: {note}", highlight=False, markup=False)


def write_results(path: Path, results: list[ScenarioResult], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "passed": all(r.passed for r in results),
                                "scenarios": [r.as_dict() for r in results]}, indent=2, default=str))
