"""Prometheus metrics, kept in a registry of the app's own rather than the process-wide default.

With several uvicorn workers (``PROMETHEUS_MULTIPROC_DIR`` set), every worker writes its
values to files there and a scrape adds up all workers, whichever one answers it.
"""

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# Sub-millisecond buckets: a single-image inference here takes ~0.1 ms.
_FAST_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class VersionMetrics:
    """The model metrics of one served version: what its batcher records."""

    images: Counter
    batch_size: Histogram
    queue_wait: Histogram
    inference: Histogram
    queued_images: Gauge
    rejected: Counter  # queue full
    expired: Counter  # deadline passed while queued


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mnist_http_requests",
            "HTTP requests by route, method and status; gRPC calls too, as method GRPC, the "
            "gRPC method as route and its status code's name as status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mnist_http_request_duration_seconds",
            "Time from request to response, by route (for gRPC, the gRPC method).",
            ["route"],
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        # Every model metric below carries the version that did the work.
        self.images = Counter(
            "mnist_images_predicted",
            "Images run through the model.",
            ["version"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mnist_batch_size",
            "Images in one onnxruntime call.",
            ["version"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "mnist_queue_wait_seconds",
            "Time a request waited for its batch to start.",
            ["version"],
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "mnist_inference_seconds",
            "Time of one onnxruntime call.",
            ["version"],
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.queued_images = Gauge(
            "mnist_queued_images",
            "Images waiting for inference.",
            ["version"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # By reason, not version: most refusals happen before a version is chosen.
        self.rejected = Counter(
            "mnist_rejected_requests",
            "Inference requests refused, by reason: queue_full (503), inflight_limit (503, "
            "before the body is read), decode_budget (503: big images decoding at once), "
            "deadline (504, MNIST_REQUEST_TIMEOUT_MS passed while queued), too_large (413: "
            "body or image count over the limits).",
            ["reason"],
            registry=self.registry,
        )
        # A gauge at 1 while served, 0 once unloaded, rather than an Info: Info does not
        # work across worker processes.
        self.model = Gauge(
            "mnist_model_info",
            "The model versions being served, and the execution provider each runs on.",
            ["version", "id", "provider"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.loads = Counter(
            "mnist_model_loads",
            "Attempts to load a model version, by outcome: loaded, or refused (the reason is "
            "in the log and in POST /v2/repository/index).",
            ["version", "outcome"],
            registry=self.registry,
        )

        self.auth_failures = Counter(
            "mnist_auth_failures",
            "Requests refused for their API key: missing, invalid, or forbidden (not admin).",
            ["reason"],
            registry=self.registry,
        )

        # The children of a request's route, method and status, found once: labels() costs
        # as much again as the update (a lock, the label checks), and a busy worker asks
        # for the same few over and over (JSON c=1 and c=32: 1.02x req/s).
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

        # ProcessCollector does not work in multiprocess mode: read /proc ourselves, per pid.
        self.resident_memory = Gauge(
            "mnist_process_resident_memory_bytes",
            "Resident memory of each worker process.",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.open_fds = Gauge(
            "mnist_process_open_fds",
            "Open file descriptors of each worker process.",
            registry=self.registry,
            multiprocess_mode="liveall",
        )

    def request_done(self, route: str, method: str, status: str, seconds: float) -> None:
        """Count and time one HTTP request or gRPC call."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def _sample_process(self) -> None:
        try:
            with open("/proc/self/statm") as statm:
                pages = int(statm.read().split()[1])
            self.resident_memory.set(pages * os.sysconf("SC_PAGE_SIZE"))
            self.open_fds.set(len(os.listdir("/proc/self/fd")))
        except OSError:
            pass  # not Linux: no /proc, no such gauges

    def of_version(self, version: int) -> VersionMetrics:
        label = str(version)
        return VersionMetrics(
            images=self.images.labels(label),
            batch_size=self.batch_size.labels(label),
            queue_wait=self.queue_wait.labels(label),
            inference=self.inference.labels(label),
            queued_images=self.queued_images.labels(label),
            rejected=self.rejected.labels("queue_full"),
            expired=self.rejected.labels("deadline"),
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric, all workers added up."""
        self._sample_process()
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
