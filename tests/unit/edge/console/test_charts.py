"""The console's server-side SVG charts: points, bars, axis labels and escaping, read back from the SVG."""

import xml.etree.ElementTree as ET

import pytest

from services.ingest.console.charts import Series, bar_chart, compact_number, label_indexes, line_chart, nice_ticks

pytestmark = pytest.mark.unit
SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def _classed(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}{tag}") if e.get("class") == cls]


def test_a_line_chart_has_one_point_per_label_with_its_value():
    labels = [f"03-{d:02d}" for d in range(1, 31)]
    values = [float(d * 10) for d in range(1, 31)]
    root = _parse(line_chart(labels, [Series("events", values)], title="Usage"))
    points = _classed(root, "circle", "point")
    assert len(points) == 30
    assert [p.get("data-label") for p in points] == labels
    assert [float(p.get("data-value") or 0) for p in points] == values
    assert root.get("data-points") == "30"
    assert len(_classed(root, "polyline", "line")) == 1


def test_higher_values_are_drawn_higher_and_zero_on_the_axis():
    root = _parse(line_chart(["a", "b", "c"], [Series("s", [0.0, 50.0, 100.0])], title="t"))
    ys = [float(p.get("cy") or 0) for p in _classed(root, "circle", "point")]
    assert ys[0] > ys[1] > ys[2]
    baseline = max(float(g.get("y1") or 0) for g in _classed(root, "line", "grid"))
    assert ys[0] == pytest.approx(baseline)


def test_the_x_axis_labels_at_most_eight_points_including_the_first_and_the_last():
    labels = [f"d{i}" for i in range(30)]
    root = _parse(line_chart(labels, [Series("s", [1.0] * 30)], title="t"))
    shown = [t.text for t in _classed(root, "text", "x-label")]
    assert len(shown) == 8
    assert shown[0] == "d0" and shown[-1] == "d29"
    assert label_indexes(5) == [0, 1, 2, 3, 4]


def test_a_bar_chart_has_one_bar_per_label_and_series():
    months = ["2026-01", "2026-02", "2026-03"]
    root = _parse(bar_chart(months, [Series("invoiced", [10.0, 20.0, 30.0]), Series("collected", [5.0, 20.0, 0.0])],
                            title="Revenue"))
    bars = _classed(root, "rect", "bar")
    assert len(bars) == 6
    assert [(b.get("data-series"), b.get("data-label"), b.get("data-value")) for b in bars[:3]] == [
        ("invoiced", "2026-01", "10"), ("invoiced", "2026-02", "20"), ("invoiced", "2026-03", "30")]
    assert float(bars[5].get("height") or -1) == 0.0  # a zero is a bar of no height, still counted
    assert [t.text for t in _classed(root, "text", "x-label")] == months


def test_the_y_axis_is_labelled_with_nice_ticks_above_the_largest_value():
    assert nice_ticks(87) == [0, 25, 50, 75, 100]
    assert nice_ticks(1000) == [0, 250, 500, 750, 1000]
    assert nice_ticks(0) == [0, 1]
    root = _parse(line_chart(["a", "b"], [Series("s", [1200.0, 87000.0])], title="t"))
    assert [t.text for t in _classed(root, "text", "y-label")] == ["0", "25k", "50k", "75k", "100k"]
    assert compact_number(2_500_000) == "2.5M" and compact_number(0.5) == "0.5"


def test_labels_and_names_are_escaped():
    svg = line_chart(["<b>"], [Series('x"><script>', [1.0])], title="a & b")
    assert "<script>" not in svg and "<b>" not in svg
    root = _parse(svg)
    assert root.get("aria-label") == "a & b"


def test_a_series_must_have_a_value_per_label():
    with pytest.raises(ValueError, match="2 values for 3 labels"):
        line_chart(["a", "b", "c"], [Series("s", [1.0, 2.0])], title="t")


def test_days_still_to_come_have_no_point_and_the_line_stops_before_them():
    labels = ["03-10", "03-11", "03-12", "03-13"]
    root = _parse(line_chart(labels, [Series("s", [1.0, 0.0, 2.0, None])], title="t"))
    points = _classed(root, "circle", "point")
    assert [p.get("data-label") for p in points] == ["03-10", "03-11", "03-12"]
    assert root.get("data-points") == "3"
    assert len(_classed(root, "polyline", "line")[0].get("points", "").split()) == 3
    assert [t.text for t in _classed(root, "text", "x-label")] == labels  # the axis still spans the period
