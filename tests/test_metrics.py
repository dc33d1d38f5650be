"""Request metrics: each request counted by route, method and status, and timed by route."""

from service.metrics import Metrics
from tests.metrics_text import key, samples


def test_each_request_is_counted_under_its_own_labels_and_timed_by_route() -> None:
    metrics = Metrics()
    metrics.request_done("/predict", "POST", "200", 0.002)
    metrics.request_done("/predict", "POST", "200", 0.003)
    metrics.request_done("/predict", "POST", "422", 0.0004)
    metrics.request_done("/health", "GET", "200", 0.0001)
    seen = samples(metrics.render().decode())

    def count(route: str, method: str, status: str) -> float:
        return seen[key("mnist_http_requests_total", route=route, method=method, status=status)]

    assert count("/predict", "POST", "200") == 2
    assert count("/predict", "POST", "422") == 1
    assert count("/health", "GET", "200") == 1
    latency = "mnist_http_request_duration_seconds"
    assert seen[key(f"{latency}_count", route="/predict")] == 3
    assert abs(seen[key(f"{latency}_sum", route="/predict")] - 0.0054) < 1e-9
    assert seen[key(f"{latency}_bucket", le="0.0005", route="/predict")] == 1
    assert seen[key(f"{latency}_count", route="/health")] == 1
