"""The per-worker process gauges, which ProcessCollector cannot give in multiprocess mode."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.metrics import Metrics, forget_dead_workers


def test_a_scrape_reports_the_resident_memory_and_open_file_descriptors() -> None:
    text = Metrics().render().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("mnist_process_")
    }
    assert values["mnist_process_resident_memory_bytes"] > 1_000_000
    assert values["mnist_process_open_fds"] >= 3


def test_a_scrape_forgets_the_live_gauges_of_a_dead_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker that filled its queue, then died: its gauge files stay behind.
    worker = subprocess.run(
        [
            sys.executable,
            "-c",
            "from service.metrics import Metrics\n"
            "m = Metrics()\n"
            "m.of_version(1).queued_images.set(8192)\n"
            "m.open_fds.set(42)\n"
            "m.of_version(1).rejected.inc()\n"
            "import os; print(os.getpid())",
        ],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    dead_pid = int(worker.stdout)
    assert (tmp_path / f"gauge_livesum_{dead_pid}.db").exists()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    text = Metrics().render().decode()

    assert 'mnist_queued_images{version="1"}' not in text
    assert f'pid="{dead_pid}"' not in text
    assert not list(tmp_path.glob(f"gauge_live*_{dead_pid}.db"))
    # Its counters stay: a counter never goes back, whoever counted.
    assert 'mnist_rejected_requests_total{reason="queue_full"} 1.0' in text


def test_the_live_gauges_of_a_live_process_stay(tmp_path: Path) -> None:
    mine = tmp_path / f"gauge_livesum_{os.getpid()}.db"
    mine.write_bytes(b"")
    assert forget_dead_workers(str(tmp_path)) == []
    assert mine.exists()
