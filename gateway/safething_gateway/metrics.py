"""Counters and gauges, rendered in the Prometheus text format (``GET /metrics``)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Metrics"]


class Metrics:
    """Labelled counters plus gauges computed on demand."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.gauges: dict[str, Callable[[], dict[tuple[tuple[str, str], ...], float]]] = {}
        self.help: dict[str, str] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0.0) + amount

    def get(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def gauge(
        self, name: str, help: str, fn: Callable[[], dict[tuple[tuple[str, str], ...], float]]
    ) -> None:
        self.gauges[name] = fn
        self.help[name] = help

    def describe(self, name: str, help: str) -> None:
        self.help[name] = help

    def render(self) -> str:
        lines: list[str] = []
        names = sorted({n for n, _ in self.counters})
        for name in names:
            lines.append(f"# HELP {name} {self.help.get(name, name)}")
            lines.append(f"# TYPE {name} counter")
            for (n, labels), value in sorted(self.counters.items()):
                if n == name:
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        for name, fn in sorted(self.gauges.items()):
            lines.append(f"# HELP {name} {self.help.get(name, name)}")
            lines.append(f"# TYPE {name} gauge")
            for labels, value in sorted(fn().items()):
                lines.append(f"{name}{_labels(labels)} {value:g}")
        return "\n".join(lines) + "\n"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels
    )
    return "{" + inner + "}"
