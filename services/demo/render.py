"""Write the demo's invoices as files: one HTML page and one PDF per finalised invoice, plus an index.html.

The documents themselves come from `shared.adapters.documents` (the same renderers the edge serves at
`GET /v1/invoices/{id}/document`).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from shared.adapters.documents import (
    load_final_invoice_documents,
    render_index_html,
    render_invoice_html,
    render_invoice_pdf,
)

DEMO_ISSUER = "OpenLedger Billing (demo issuer)"


def render_invoices(engine: sa.Engine, out_dir: Path, *, limit: int | None = None, pdf: bool = True) -> int:
    """Write `<number>.html` (and `<number>.pdf` when `pdf`) per finalised invoice and an index.html;
    returns how many invoices were written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with engine.connect() as conn:
        documents = load_final_invoice_documents(conn, limit=limit, issuer_name=DEMO_ISSUER)
    for document in documents:
        (out_dir / f"{document.file_stem}.html").write_text(render_invoice_html(document))
        if pdf:
            (out_dir / f"{document.file_stem}.pdf").write_bytes(render_invoice_pdf(document))
    (out_dir / "index.html").write_text(render_index_html(documents, pdf_links=pdf))
    return len(documents)
