"""wrk as the load generator: C, one epoll thread, so it leaves the 2 cores to the server."""

import json
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "post.lua"
_MARKER = "WRK_JSON "


class LoadError(Exception):
    """wrk is missing, failed, or printed no figures."""


@dataclass(frozen=True)
class LoadFigures:
    requests: int
    duration_s: float
    requests_per_s: float
    bytes: int
    socket_errors: dict[str, int]  # connect, read, write, timeout
    non_200: int
    statuses: dict[str, int]  # status -> count, for the answers that were not 200
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    wrk_cpu_s: float

    @property
    def errors(self) -> int:
        return self.non_200 + sum(self.socket_errors.values())


def find_wrk(explicit: str | None) -> str:
    found = explicit or shutil.which("wrk")
    if found is None or not Path(found).is_file():
        raise LoadError(
            "wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk) or pass --wrk PATH"
        )
    return found


def wrk_command(
    wrk: str,
    url: str,
    body_file: Path,
    content_type: str,
    connections: int,
    threads: int,
    duration_s: float,
    timeout_s: float,
    headers: tuple[str, ...] = (),
) -> list[str]:
    return [
        wrk,
        f"--threads={min(threads, connections)}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        *(f"--header={header}" for header in headers),
        f"--script={SCRIPT}",
        url,
        "--",
        str(body_file),
        content_type,
    ]


def parse_wrk_output(stdout: str, wrk_cpu_s: float) -> LoadFigures:
    line = next((ln for ln in stdout.splitlines() if ln.startswith(_MARKER)), None)
    if line is None:
        raise LoadError(f"wrk printed no {_MARKER.strip()} line:\n{stdout[-2000:]}")
    raw: dict[str, Any] = json.loads(line[len(_MARKER) :])
    errors = raw["errors"]
    latency = raw["latency_us"]
    return LoadFigures(
        requests=int(raw["requests"]),
        duration_s=float(raw["duration_s"]),
        requests_per_s=float(raw["requests_per_s"]),
        bytes=int(raw["bytes"]),
        # wrk's own "status" count (>= 400) is part of non_200, which the script counts exactly.
        socket_errors={k: int(errors[k]) for k in ("connect", "read", "write", "timeout")},
        non_200=int(raw["non_200"]),
        statuses={str(k): int(v) for k, v in raw["statuses"].items()},
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        p999_ms=latency["p999"] / 1000,
        max_ms=latency["max"] / 1000,
        wrk_cpu_s=wrk_cpu_s,
    )


def run_wrk(command: list[str], duration_s: float) -> LoadFigures:
    """Runs wrk to completion (bounded: its own -d, and a hard limit beyond it)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=duration_s + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish within {duration_s + 60:.0f} s") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise LoadError(f"wrk exited with {done.returncode}: {done.stderr or done.stdout}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse_wrk_output(done.stdout, cpu)
