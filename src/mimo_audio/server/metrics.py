"""Prometheus metrics, written by hand (text exposition format 0.0.4; no extra dependency).

Counters, gauges and histograms with labels; ``Registry.render()`` returns the body of ``GET /metrics``.
Thread-safe: the batcher thread and the event loop both record.
"""

from __future__ import annotations

import math
import threading


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metric:
    kind = ""

    def __init__(self, name: str, doc: str, labelnames: tuple[str, ...] = ()):
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...], labelnames: tuple[str, ...] = ()):
        super().__init__(name, doc, labelnames)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._data: dict[tuple[str, ...], list] = {}

    def observe(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            entry = self._data.setdefault(key, [[0] * len(self.buckets), 0.0])
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    entry[0][i] += 1
            entry[1] += value

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s)) for k, (c, s) in self._data.items())
        lines = self.header()
        for key, (counts, total) in items:
            for bound, c in zip(self.buckets, counts):
                le = 'le="' + _fmt(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {c}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_fmt(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {counts[-1]}")
        return lines


class Registry:
    """The server's metrics. Names follow Prometheus conventions with a ``mimo_audio_`` prefix."""

    def __init__(self):
        lat = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
        self.requests = Counter("mimo_audio_http_requests_total", "HTTP requests by route, method and status.",
                                ("route", "method", "status"))
        self.latency = Histogram("mimo_audio_http_request_duration_seconds",
                                 "HTTP request duration (until the response is complete).", lat, ("route",))
        self.batch_size = Histogram("mimo_audio_batch_size", "Requests per engine batch.",
                                    (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
        self.batches = Counter("mimo_audio_batches_total", "Engine batches run.")
        self.joined = Counter("mimo_audio_requests_joined_total", "Requests admitted into an already running batch.")
        self.queue_depth = Gauge("mimo_audio_queue_depth", "Requests admitted and waiting for a batch.")
        self.running = Gauge("mimo_audio_requests_running", "Requests in the batch now running.")
        self.rejected = Counter("mimo_audio_requests_rejected_total",
                                "Requests refused before generation, by reason.", ("reason",))
        self.cancelled = Counter("mimo_audio_requests_cancelled_total",
                                 "Requests whose row was cancelled, by reason.", ("reason",))
        self.completed = Counter("mimo_audio_requests_completed_total", "Generation requests finished, by task.",
                                 ("task",))
        self.queue_wait = Histogram("mimo_audio_queue_wait_seconds", "Time from admission to batch start.", lat)
        self.first_piece = Histogram("mimo_audio_time_to_first_piece_seconds",
                                     "Time from admission to the first generated piece (text or audio).", lat)
        self.pieces = Counter("mimo_audio_generated_pieces_total", "Pieces (generated groups) streamed.")
        self.audio_out = Counter("mimo_audio_audio_output_seconds_total", "Seconds of audio generated.")
        self.audio_in = Counter("mimo_audio_audio_input_seconds_total", "Seconds of audio received.")
        self.errors = Counter("mimo_audio_engine_errors_total", "Engine batches that raised.")

    def all(self) -> list[_Metric]:
        return [v for v in vars(self).values() if isinstance(v, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
