"""Which invoice document format an `Accept` header asks for."""

import pytest

from services.ingest.routes.documents import DocumentFormat, negotiate

pytestmark = pytest.mark.unit

PDF, HTML = DocumentFormat.PDF, DocumentFormat.HTML


@pytest.mark.parametrize(("accept", "expected"), [
    (None, PDF), ("", PDF), ("*/*", PDF), ("application/pdf", PDF), ("text/html", HTML),
    ("application/*", PDF), ("text/*", HTML),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", HTML),  # a browser
    ("application/pdf;q=0.5, text/html", HTML), ("TEXT/HTML; q=0.4, application/pdf; q=0.4", PDF),
    ("application/pdf;q=0, */*", HTML), ("*/*, application/pdf;q=0", HTML),
])
def test_the_highest_quality_supported_type_wins_and_pdf_breaks_ties(accept, expected):
    assert negotiate(accept) is expected


@pytest.mark.parametrize("accept", ["application/json", "image/png, text/plain", "*/*;q=0",
                                    "application/pdf;q=0, text/html;q=0", "text/html;q=nonsense"])
def test_a_header_accepting_neither_format_gets_none(accept):
    assert negotiate(accept) is None
