"""The helpers the benchmark modules share (``safething.bench.common``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from safething.bench.common import by_name, sqlite_url, with_p_target, with_target
from safething.bench.runner import latency_metrics, metric


@pytest.mark.parametrize(
    ("op", "value", "meets"),
    [
        ("<", 2.0, False),
        ("<", 2.5, True),
        ("<=", 2.0, True),
        ("<=", 1.5, False),
        (">=", 2.0, True),
        (">=", 2.5, False),
    ],
)
def test_with_target_notes_the_target_and_whether_it_is_met(
    op: str, value: float, meets: bool
) -> None:
    m = metric("x_rate", 2.0, "ops/s", params={"n": 1})
    targeted = with_target(m, op, value)
    assert targeted == {**m, "target": {"op": op, "value": value}, "meets_target": meets}
    assert list(targeted) == ["name", "value", "unit", "params", "target", "meets_target"]
    assert "target" not in m  # the metric given is left alone


def test_with_target_refuses_an_unknown_operator() -> None:
    with pytest.raises(ValueError, match="unknown target operator '>'"):
        with_target(metric("x", 1.0, "ms"), ">", 1.0)


def test_with_p_target_marks_only_that_percentile() -> None:
    metrics = latency_metrics("x_latency", [1.0, 2.0, 3.0], params={})
    marked = with_p_target(metrics, "p99", "<", 5.0)
    assert [m["name"] for m in marked] == [f"x_latency_{p}_ms" for p in ("p50", "p99", "max")]
    assert [m.get("meets_target") for m in marked] == [None, True, None]
    assert by_name(marked, "x_latency_p99_ms")["target"] == {"op": "<", "value": 5.0}
    with pytest.raises(ValueError, match="not enough values to unpack"):
        by_name(marked, "x_latency_p90_ms")


def test_sqlite_url_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_url(Path("a.db")) == f"sqlite://{tmp_path.resolve()}/a.db"
