"""Prometheus metrics, one registry per gateway instance (tests run several in a process).

Names follow the convention: ``wardgate_<what>_<unit>``; labels never carry identifiers.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "wardgate_messages",
            "Messages by stage and outcome",
            ["stage", "outcome"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "wardgate_ack_seconds",
            "Time from a complete MLLP frame to its ACK being written",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "wardgate_stage_seconds",
            "Time a stage spends on one batch",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "wardgate_inference_batch_rows",
            "Rows per sandbox inference call",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.model_info = Gauge(
            "wardgate_model_info",
            "Loaded models and the execution provider each runs on",
            ["model", "version", "provider"],
            registry=self.registry,
        )
        self.deid_actions = Counter(
            "wardgate_deid_actions",
            "De-identification actions by rule",
            ["rule", "action"],
            registry=self.registry,
        )
        self.deid_identifiers = Counter(
            "wardgate_deid_identifiers",
            "Identifiers handled by de-identification, by category (never by value)",
            ["category", "action"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def merge_exposition(*texts: str) -> bytes:
    """One valid exposition from several processes'.

    Families with one name are joined, and a sample that several processes report with
    the same labels (every process has the unlabelled histograms, zero where unused) is
    summed, as counters and histograms add up across processes; ``_created`` keeps the
    earliest time.
    """
    families: dict[str, Metric] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name in families:
                families[family.name].samples.extend(family.samples)
            else:
                families[family.name] = family
    for family in families.values():
        merged: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            seen = merged.get(key)
            if seen is None:
                merged[key] = sample
            elif sample.name.endswith("_created"):
                merged[key] = seen._replace(value=min(seen.value, sample.value))
            else:
                merged[key] = seen._replace(value=seen.value + sample.value)
        family.samples = list(merged.values())

    class _Snapshot(Collector):
        def collect(self) -> Iterable[Metric]:
            return list(families.values())

    registry = CollectorRegistry()
    registry.register(_Snapshot())
    return generate_latest(registry)
