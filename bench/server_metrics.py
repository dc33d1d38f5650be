"""What the server says about itself (/metrics) over one scenario: batch sizes, inference time."""

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# (histogram, label filter): the sums and counts whose change over a scenario we report.
_HISTOGRAMS = {
    "batch": ("mnist_batch_size", {}),
    "inference": ("mnist_inference_seconds", {}),
    "queue_wait": ("mnist_queue_wait_seconds", {}),
    "request": ("mnist_http_request_duration_seconds", {"route": "/predict"}),
}

Snapshot = dict[str, float]


@dataclass(frozen=True)
class ServerView:
    batches: int
    mean_batch: float
    inference_s: float  # total time inside onnxruntime calls
    mean_inference_ms: float
    mean_queue_wait_ms: float
    mean_request_ms: float  # as the server times it: from ASGI call to response sent


def scrape(base_url: str) -> Snapshot | None:
    """The sums and counts now; None if /metrics does not answer (the figures are then absent)."""
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return parse(text)


def parse(text: str) -> Snapshot:
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name == "mnist_queued_images":
            snapshot["queued"] = sum(sample.value for sample in family.samples)
        for key, (name, labels) in _HISTOGRAMS.items():
            if family.name != name:
                continue
            for sample in family.samples:
                if not all(sample.labels.get(k) == v for k, v in labels.items()):
                    continue
                for suffix in ("_sum", "_count"):
                    if sample.name == name + suffix:
                        snapshot[key + suffix] = snapshot.get(key + suffix, 0.0) + sample.value
    return snapshot


def settle(base_url: str, timeout_s: float = 10.0, poll_s: float = 0.25) -> bool:
    """Waits until the server has finished the requests of the last run (bounded).

    wrk stops at its deadline, but the server still works through what was queued; left
    alone, that work would be counted in the next scenario's time and CPU.
    """
    deadline = time.monotonic() + timeout_s
    previous = scrape(base_url)
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        current = scrape(base_url)
        if current is None or previous is None:
            return False
        idle = current.get("queued", 0.0) == 0.0
        if idle and current.get("request_count") == previous.get("request_count"):
            return True
        previous = current
    return False


def difference(before: Snapshot, after: Snapshot) -> ServerView | None:
    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    def mean(key: str, scale: float = 1.0) -> float:
        count = delta(key + "_count")
        return delta(key + "_sum") / count * scale if count else 0.0

    batches = round(delta("batch_count"))
    if batches <= 0:
        return None
    return ServerView(
        batches=batches,
        mean_batch=mean("batch"),
        inference_s=delta("inference_sum"),
        mean_inference_ms=mean("inference", 1000),
        mean_queue_wait_ms=mean("queue_wait", 1000),
        mean_request_ms=mean("request", 1000),
    )
