"""The gateway's metrics, kept and rendered by prometheus_client (``GET /metrics``).

Each gateway has its own registry with the ``process_*`` and ``python_*``
collectors and its counters; the counters it knows are there from the start,
at 0 for every transport and every refusal reason, so a dashboard or an
alert on ``rate(...)`` sees a series before the first event. Gauges are
computed when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from safething_gateway.protocol import ProtocolError

__all__ = ["TRANSPORTS", "Metrics"]

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created

TRANSPORTS = ("mqtt", "coap", "http")
"""The transports whose counters exist from the start."""

Labels = tuple[tuple[str, str], ...]
GaugeFn = Callable[[], dict[Labels, float]]

_KNOWN: dict[str, tuple[str, tuple[str, ...]]] = {
    "safething_gateway_messages_in_total": ("Device messages accepted", ("transport",)),
    "safething_gateway_messages_out_total": ("Messages pushed to devices", ("transport",)),
    "safething_gateway_rejected_total": (
        "Device messages refused, by reason",
        ("reason", "transport"),
    ),
}


def _reasons() -> list[str]:
    found: set[str] = set()
    todo: list[type[ProtocolError]] = [ProtocolError]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        reason = getattr(cls, "reason", "")
        if isinstance(reason, str) and reason:
            found.add(reason)
    return sorted(found)


class _Gauges(Collector):
    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, GaugeFn]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, fn) in sorted(self.gauges.items()):
            values = fn()
            names = sorted({k for labels in values for k, _ in labels})
            family = GaugeMetricFamily(name, help_text, labels=names)
            for labels, value in sorted(values.items()):
                given = dict(labels)
                family.add_metric([given.get(k, "") for k in names], value)
            yield family


class Metrics:
    """Labelled counters plus gauges computed on demand, in one prometheus_client registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)
        self._counters: dict[str, Counter] = {}
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        """``(name, labels as given)`` -> the counter series :meth:`inc` counts in (a
        series once made stays in its counter: this holds no more series than that)."""
        self._help = {name: help_text for name, (help_text, _) in _KNOWN.items()}
        self._gauges = _Gauges()
        self.registry.register(self._gauges)
        for name, (help_text, labels) in _KNOWN.items():
            counter = self._counter(name, help_text, labels)
            for transport in TRANSPORTS:
                if labels == ("transport",):
                    counter.labels(transport=transport)
                else:
                    for reason in _reasons():
                        counter.labels(reason=reason, transport=transport)

    def _counter(self, name: str, help_text: str, labels: Iterable[str]) -> Counter:
        counter = self._counters.get(name)
        if counter is None:
            counter = Counter(
                name.removesuffix("_total"), help_text, list(labels), registry=self.registry
            )
            self._counters[name] = counter
        return counter

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        # Every gateway message counts here: the series is looked up once, not made
        # again by prometheus_client's labels() (its checks, a lock) for each message.
        key = (name, tuple(labels.items()))
        series = self._series.get(key)
        if series is None:
            counter = self._counter(name, self._help.get(name, name), sorted(labels))
            series = self._series[key] = counter.labels(**labels) if labels else counter
        series.inc(amount)

    @property
    def counters(self) -> dict[tuple[str, Labels], float]:
        """Every counter series that counted something: ``(name, labels) -> value``."""
        found: dict[tuple[str, Labels], float] = {}
        for name, counter in self._counters.items():
            for metric in counter.collect():
                for sample in metric.samples:
                    if sample.name == name and sample.value:
                        found[(name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def get(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def gauge(self, name: str, help: str, fn: GaugeFn) -> None:
        self._gauges.gauges[name] = (help, fn)

    def describe(self, name: str, help: str) -> None:
        """The help text of a counter made later by :meth:`inc`."""
        self._help.setdefault(name, help)

    def render(self) -> str:
        """The Prometheus text exposition format."""
        return prometheus_client.generate_latest(self.registry).decode()
