"""Prometheus metrics, kept in a registry of the app's own rather than the process-wide default."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mnist_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mnist_http_request_duration_seconds",
            "Time from request to response, by route.",
            ["route"],
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "mnist_images_predicted", "Images run through the model.", registry=self.registry
        )
        self.batch_size = Histogram(
            "mnist_batch_size",
            "Images in one onnxruntime call.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "mnist_queue_wait_seconds",
            "Time a request waited for its batch to start.",
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "mnist_inference_seconds",
            "Time of one onnxruntime call.",
            buckets=_FAST_BUCKETS,
            registry=self.registry,
        )
        self.queued_images = Gauge(
            "mnist_queued_images", "Images waiting for inference.", registry=self.registry
        )
        self.rejected = Counter(
            "mnist_rejected_requests",
            "Requests refused with 503 because the queue was full.",
            registry=self.registry,
        )
        self.model = Info("mnist_model", "The model being served.", registry=self.registry)
