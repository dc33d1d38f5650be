"""py-spy on the running server: a speedscope profile, and where the samples fall, in text."""

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_DIR = REPO_ROOT / "service"
RATE_HZ = 200


class ProfileError(Exception):
    """py-spy is missing, may not attach (ptrace), or wrote nothing."""


@dataclass(frozen=True)
class Share:
    what: str  # "function (file)" or a package
    seconds: float
    share: float  # of all busy samples of all threads


@dataclass(frozen=True)
class ProfileSummary:
    speedscope: str
    seconds: float  # how long py-spy sampled
    busy_s_by_thread: dict[str, float]
    own_by_package: tuple[Share, ...]
    own_by_function: tuple[Share, ...]
    inclusive_by_service_function: tuple[Share, ...]


def find_py_spy() -> str:
    beside_python = Path(sys.executable).with_name("py-spy")
    found = str(beside_python) if beside_python.is_file() else shutil.which("py-spy")
    if found is None:
        raise ProfileError("py-spy not found: uv pip install py-spy (into .venv)")
    return found


def start_recording(pid: int, duration_s: float, output: Path) -> subprocess.Popen[str]:
    """Samples the server (and any worker processes) for ``duration_s``; idle threads left out."""
    command = [
        find_py_spy(),
        "record",
        f"--pid={pid}",
        f"--duration={max(1, round(duration_s))}",
        f"--rate={RATE_HZ}",
        "--subprocesses",
        # Without it py-spy stops the server at each sample, which would be measured as our time.
        "--nonblocking",
        "--format=speedscope",
        f"--output={output}",
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_recording(process: subprocess.Popen[str], output: Path, timeout_s: float) -> None:
    try:
        log, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        log, _ = process.communicate()
    if process.returncode != 0 or not output.is_file():
        raise ProfileError(f"py-spy failed ({process.returncode}): {log.strip()[-1500:]}")


def summarize(speedscope_path: Path, seconds: float, top: int = 20) -> ProfileSummary:
    document: dict[str, Any] = json.loads(speedscope_path.read_text())
    frames: list[dict[str, Any]] = document["shared"]["frames"]
    labels = [_frame_label(f) for f in frames]
    packages = [_package(str(f.get("file") or "?")) for f in frames]
    ours = [_is_service_code(str(f.get("file") or "")) for f in frames]
    busy: dict[str, float] = {}
    own: defaultdict[str, float] = defaultdict(float)
    own_package: defaultdict[str, float] = defaultdict(float)
    inclusive: defaultdict[str, float] = defaultdict(float)
    for profile in document["profiles"]:
        weights: list[float] = profile["weights"]
        busy[profile["name"]] = busy.get(profile["name"], 0.0) + float(sum(weights))
        for stack, weight in zip(profile["samples"], weights, strict=True):
            if not stack:
                continue
            own[labels[stack[-1]]] += weight
            own_package[packages[stack[-1]]] += weight
            for label in {labels[i] for i in stack if ours[i]}:  # recursion counts once
                inclusive[label] += weight
    total = sum(busy.values()) or 1.0

    def ranked(seconds: dict[str, float]) -> tuple[Share, ...]:
        rows = sorted(seconds.items(), key=lambda item: -item[1])[:top]
        return tuple(Share(what, s, s / total) for what, s in rows)

    return ProfileSummary(
        str(speedscope_path), seconds, busy, ranked(own_package), ranked(own), ranked(inclusive)
    )


def _is_service_code(path: str) -> bool:
    # The code the project controls; its entry point only says "the server is running".
    return path.startswith(f"{SERVICE_DIR}/") and not path.endswith("/__main__.py")


def _frame_label(frame: dict[str, Any]) -> str:
    return f"{frame['name']} ({_short_path(str(frame.get('file') or '?'))})"


def _short_path(path: str) -> str:
    for marker in ("site-packages/", f"{REPO_ROOT}/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return Path(path).name


def _package(path: str) -> str:
    """The top-level package of a frame's file: uvicorn, starlette, service, asyncio, ..."""
    short = _short_path(path)
    top = short.split("/", 1)[0] if "/" in short else short.removesuffix(".py")
    return top.strip("<>").removeprefix("frozen ")


def format_summary(summary: ProfileSummary) -> str:
    window = summary.seconds
    lines = [f"busy time by thread over {window:.0f} s (py-spy samples; idle waits left out):"]
    for thread, seconds in sorted(summary.busy_s_by_thread.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {seconds:7.2f} s = {seconds / window:4.0%} of a core  {thread}")
    lines.append(
        "  (uvloop's C event loop and socket I/O show up as own time of Runner.run / asyncio)"
    )
    for title, rows in (
        ("own time by package (leaf frame of each sample):", summary.own_by_package),
        ("own time by function:", summary.own_by_function),
        (
            "inclusive time of the service's own functions (lower bounds: a coroutine that "
            "uvloop resumes is sampled without its callers):",
            summary.inclusive_by_service_function,
        ),
    ):
        lines.append(title)
        lines.extend(f"  {r.share:6.1%} {r.seconds:7.2f} s  {r.what}" for r in rows)
    return "\n".join(lines)
