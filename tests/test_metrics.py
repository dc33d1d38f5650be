"""Request metrics: each request counted by route, method and status, and timed by route."""

from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def test_each_request_is_counted_under_its_own_labels_and_timed_by_route() -> None:
    metrics = Metrics()
    metrics.request_done("/predict", "POST", "200", 0.002)
    metrics.request_done("/predict", "POST", "200", 0.003)
    metrics.request_done("/predict", "POST", "422", 0.0004)
    metrics.request_done("/health", "GET", "200", 0.0001)
    seen = samples(metrics)

    def count(route: str, method: str, status: str) -> float:
        labels = (("method", method), ("route", route), ("status", status))
        return seen[("mnist_http_requests_total", labels)]

    assert count("/predict", "POST", "200") == 2
    assert count("/predict", "POST", "422") == 1
    assert count("/health", "GET", "200") == 1
    latency = "mnist_http_request_duration_seconds"
    assert seen[(f"{latency}_count", (("route", "/predict"),))] == 3
    assert abs(seen[(f"{latency}_sum", (("route", "/predict"),))] - 0.0054) < 1e-9
    assert seen[(f"{latency}_bucket", (("le", "0.0005"), ("route", "/predict")))] == 1
    assert seen[(f"{latency}_count", (("route", "/health"),))] == 1
