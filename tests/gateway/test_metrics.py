"""/metrics through prometheus_client: parseable, process metrics, counters from the start."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from safething_gateway.metrics import TRANSPORTS, Metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_every_counter_is_there_at_zero_before_the_first_event() -> None:
    metrics = Metrics()
    shown = samples(metrics.render())
    for transport in TRANSPORTS:
        for name in ("safething_gateway_messages_in_total", "safething_gateway_messages_out_total"):
            assert shown[(name, (("transport", transport),))] == 0
        for reason in ("bad_mac", "replay", "rate_limited", "too_large", "revoked"):
            key = (
                "safething_gateway_rejected_total",
                (("reason", reason), ("transport", transport)),
            )
            assert shown[key] == 0, key
    assert metrics.counters == {}  # nothing counted yet


def test_process_metrics_and_counting() -> None:
    metrics = Metrics()
    metrics.inc("safething_gateway_rejected_total", reason="replay", transport="mqtt")
    metrics.inc("safething_gateway_messages_in_total", 3, transport="coap")
    metrics.gauge("safething_gateway_devices", "Provisioned devices", lambda: {(): 7.0})
    text = metrics.render()
    shown = samples(text)
    assert "# TYPE safething_gateway_rejected_total counter" in text
    assert shown[("safething_gateway_messages_in_total", (("transport", "coap"),))] == 3
    assert shown[("safething_gateway_devices", ())] == 7
    assert shown[("process_resident_memory_bytes", ())] > 0
    assert shown[("process_open_fds", ())] > 0
    assert not [name for name, _ in shown if name.endswith("_created")]
    assert metrics.get("safething_gateway_rejected_total", reason="replay", transport="mqtt") == 1
    assert metrics.counters == {
        ("safething_gateway_rejected_total", (("reason", "replay"), ("transport", "mqtt"))): 1,
        ("safething_gateway_messages_in_total", (("transport", "coap"),)): 3,
    }
    # two gateways in one process keep their own counts
    assert Metrics().get("safething_gateway_messages_in_total", transport="coap") == 0


def test_each_series_counts_its_own_whatever_the_order_of_its_labels() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.inc("safething_gateway_rejected_total", reason="replay", transport="mqtt")
    metrics.inc("safething_gateway_rejected_total", transport="mqtt", reason="replay")
    metrics.inc("safething_gateway_rejected_total", reason="bad_mac", transport="mqtt")
    metrics.inc("safething_gateway_rejected_total", 2, reason="replay", transport="coap")
    metrics.inc("safething_gateway_messages_in_total", transport="mqtt")
    metrics.inc("safething_gateway_things_restored_total")
    metrics.inc("safething_gateway_things_restored_total")
    assert metrics.counters == {
        ("safething_gateway_rejected_total", (("reason", "replay"), ("transport", "mqtt"))): 4,
        ("safething_gateway_rejected_total", (("reason", "bad_mac"), ("transport", "mqtt"))): 1,
        ("safething_gateway_rejected_total", (("reason", "replay"), ("transport", "coap"))): 2,
        ("safething_gateway_messages_in_total", (("transport", "mqtt"),)): 1,
        ("safething_gateway_things_restored_total", ()): 2,
    }
