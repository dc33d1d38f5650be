"""The per-worker process gauges, which ProcessCollector cannot give in multiprocess mode."""

from service.metrics import Metrics


def test_a_scrape_reports_the_resident_memory_and_open_file_descriptors() -> None:
    text = Metrics().render().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("mnist_process_")
    }
    assert values["mnist_process_resident_memory_bytes"] > 1_000_000
    assert values["mnist_process_open_fds"] >= 3
