"""CPU time from /proc: the server's, and the whole machine's, to tell our load from others'."""

import os
import resource
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants (uvicorn workers)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone already: it no longer uses any CPU
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man proc).
    total = (int(fields[11]) + int(fields[12])) / _TICKS
    return total + sum(process_tree_cpu_s(child) for child in children(pid))


def children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return children


@dataclass(frozen=True)
class MachineCpu:
    busy_s: float  # CPU seconds spent on anything but idle and I/O wait, all cores
    total_s: float


def machine_cpu() -> MachineCpu:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    idle = values[3] + values[4]
    total = sum(values[:8])
    return MachineCpu(busy_s=(total - idle) / _TICKS, total_s=total / _TICKS)


def own_cpu_s() -> float:
    """User + system CPU seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
