"""What the figures were measured on: without this, numbers from two runs cannot be compared."""

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import onnxruntime as ort

from service.settings import available_cpus
from training.revision import git_commit


def cgroup_cpu_quota() -> str:
    """The cgroup CPU limit as written by the kernel, or 'none'."""
    v2 = Path("/sys/fs/cgroup/cpu.max")
    v1_quota, v1_period = (
        Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
        Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    )
    try:
        if v2.is_file():
            return f"cgroup v2 cpu.max: {v2.read_text().strip()}"
        if v1_quota.is_file():
            return f"cgroup v1 cfs quota/period: {v1_quota.read_text().strip()}/" + (
                v1_period.read_text().strip()
            )
    except OSError as exc:
        return f"unreadable ({exc})"
    return "none"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tool_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout + done.stderr).strip().splitlines()[0] if done.stdout + done.stderr else ""


def machine_info(wrk: str) -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": available_cpus(),
        "cgroup_cpu_quota": cgroup_cpu_quota(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers_available": ort.get_available_providers(),
        "wrk": tool_version([wrk, "-v"]),
        "git_commit": git_commit() or "unknown",
    }
