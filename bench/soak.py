"""Soak: the real server at ~70 % of its measured capacity for a long while, mixed JSON and
PNG requests; errors, latency drift and per-worker memory growth, minute by minute.

A benchmark, not a test: it measures and reports, and passes or fails nothing.
"""

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as `python bench/soak.py`: make `bench`, `service` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cpu, loadgen
from bench.machine import machine_info
from bench.payloads import (
    Payload,
    check_answer,
    json_payload,
    load_test_digits,
    offline_data_dir,
    png_payload,
)
from bench.server import REPO_ROOT, RunningServer, ServerConfig

PACED = Path(__file__).resolve().parent / "paced.lua"
CONNECTIONS = 8  # per payload: enough to keep the rate, few enough not to queue much


@dataclass(frozen=True)
class Slice:
    started_s: float
    payload: str
    target_per_s: float
    requests_per_s: float
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/mnist.onnx"))
    parser.add_argument("--duration", type=float, default=600.0, help="soak seconds")
    parser.add_argument("--slice", type=float, default=60.0, help="seconds per report line")
    parser.add_argument("--load", type=float, default=0.7, help="share of measured capacity")
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--wrk", default=None)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/soak")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="checkout to serve from")
    return parser.parse_args(argv)


def wrk_run(
    wrk: str, url: str, payload: Payload, body: Path, seconds: float, pause_ms: float
) -> loadgen.LoadFigures:
    command = loadgen.wrk_command(
        wrk, url + payload.path, body, payload.content_type, CONNECTIONS, 1, seconds, 10
    )
    if pause_ms > 0:
        command[command.index(f"--script={loadgen.SCRIPT}")] = f"--script={PACED}"
        command.append(f"{pause_ms:.3f}")
    return loadgen.run_wrk(command, seconds)


def together(
    wrk: str, url: str, runs: list[tuple[Payload, Path, float]], seconds: float
) -> list[loadgen.LoadFigures]:
    """One wrk per payload, at the same time: the server sees the mix."""
    results: list[loadgen.LoadFigures | BaseException] = [RuntimeError("not run")] * len(runs)

    def one(index: int, payload: Payload, body: Path, pause_ms: float) -> None:
        try:
            results[index] = wrk_run(wrk, url, payload, body, seconds, pause_ms)
        except BaseException as exc:  # re-raised below, in the main thread
            results[index] = exc

    threads = [
        threading.Thread(target=one, args=(i, *run), daemon=True) for i, run in enumerate(runs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 90)
    figures = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        figures.append(result)
    return figures


def worker_rss_mb(server_pid: int) -> dict[int, float]:
    """Resident memory of each uvicorn worker (the supervisor's children), by pid."""
    # With several workers the supervisor's children are the workers (spawned through
    # multiprocessing) and its resource tracker, which is no worker.
    pids = [pid for pid in cpu.children(server_pid) if b"spawn_main" in _cmdline(pid)]
    rss = {}
    for pid in pids or [server_pid]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        rss[pid] = kb / 1024
    return rss


def repace(pause_ms: float, achieved_per_s: float, target_per_s: float) -> float:
    """The pause that would have given ``target_per_s``: what each request took beyond the
    pause, as the last slice achieved, stays the same."""
    if achieved_per_s <= 0:
        return pause_ms
    busy_ms = max(0.0, CONNECTIONS * 1000 / achieved_per_s - pause_ms)
    # Halfway there: the time a request takes falls as the rate falls, so aiming straight
    # at the target overshoots, and the rate would swing from slice to slice.
    return (pause_ms + pause_for(target_per_s, busy_ms)) / 2


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def pause_for(rate_per_s: float, latency_ms: float) -> float:
    """The wait per connection that makes CONNECTIONS connections send ``rate_per_s``."""
    return max(0.0, CONNECTIONS * 1000 / rate_per_s - latency_ms)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = args.model if args.model.is_absolute() else REPO_ROOT / args.model
    if not model.is_file():
        print(f"no model at {model}: train one or pass --model PATH", file=sys.stderr)
        return 2
    wrk = loadgen.find_wrk(args.wrk)
    args.out.mkdir(parents=True, exist_ok=True)
    digits = load_test_digits(offline_data_dir())
    payloads = [
        json_payload(digits.images[0], int(digits.labels[0])),
        png_payload(digits.images[1], int(digits.labels[1])),
    ]
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {message}", flush=True)

    config = ServerConfig("soak", {"MNIST_WORKERS": str(args.workers)})
    with (
        tempfile.TemporaryDirectory() as scratch,
        RunningServer(
            model, "cpu", config, args.out / "server.log", ready_timeout_s=120, repo=args.repo
        ) as server,
    ):
        bodies = []
        for payload in payloads:
            body = Path(scratch, payload.name)
            body.write_bytes(payload.body)
            bodies.append(body)
            check_answer(server.url, payload)
        # Capacity: both payloads flat out at once, as in the soak itself.
        flat = together(
            wrk,
            server.url,
            [(p, b, 0.0) for p, b in zip(payloads, bodies, strict=True)],
            args.capacity_seconds,
        )
        capacity = {p.name: f.requests_per_s for p, f in zip(payloads, flat, strict=True)}
        targets = {name: rate * args.load for name, rate in capacity.items()}
        say(
            "capacity "
            + ", ".join(f"{n} {r:.0f} req/s" for n, r in capacity.items())
            + f"; soak at {args.load:.0%}: "
            + ", ".join(f"{n} {r:.0f} req/s" for n, r in targets.items())
        )
        pauses = {
            p.name: pause_for(targets[p.name], f.p50_ms * args.load)
            for p, f in zip(payloads, flat, strict=True)
        }
        slices: list[Slice] = []
        rss: list[dict[str, Any]] = [{"at_s": 0.0, "mb": worker_rss_mb(server.pid)}]
        machine_before = cpu.machine_cpu()
        server_before = cpu.process_tree_cpu_s(server.pid)
        soak_started = time.monotonic()
        while (elapsed := time.monotonic() - soak_started) < args.duration - 1:
            seconds = min(args.slice, args.duration - elapsed)
            runs = [(p, b, pauses[p.name]) for p, b in zip(payloads, bodies, strict=True)]
            for payload, figures in zip(
                payloads, together(wrk, server.url, runs, seconds), strict=True
            ):
                slices.append(
                    Slice(
                        round(elapsed, 1),
                        payload.name,
                        targets[payload.name],
                        figures.requests_per_s,
                        figures.errors,
                        figures.p50_ms,
                        figures.p99_ms,
                        figures.max_ms,
                    )
                )
            # wrk is closed-loop: when answers get slower (a busier machine), the same pause
            # sends less. Each slice re-aims the pause from what the last one achieved.
            for slice_ in slices[-len(payloads) :]:
                pauses[slice_.payload] = repace(
                    pauses[slice_.payload], slice_.requests_per_s, slice_.target_per_s
                )
            rss.append(
                {"at_s": round(time.monotonic() - soak_started, 1), "mb": worker_rss_mb(server.pid)}
            )
            say(
                " | ".join(
                    f"{s.payload} {s.requests_per_s:.0f}/{s.target_per_s:.0f} req/s "
                    f"p50 {s.p50_ms:.1f} p99 {s.p99_ms:.1f} ms err {s.errors}"
                    for s in slices[-len(payloads) :]
                )
                + " | RSS "
                + ", ".join(f"{mb:.0f}" for mb in rss[-1]["mb"].values())
                + " MB"
            )
        soak_s = time.monotonic() - soak_started
        busy = cpu.machine_cpu().busy_s - machine_before.busy_s
        server_cpu = cpu.process_tree_cpu_s(server.pid) - server_before
    summary = summarize(slices, rss, [p.name for p in payloads])
    summary["cpu_cores"] = {
        "server": server_cpu / soak_s,
        "everything_else_incl_wrk": max(0.0, busy - server_cpu) / soak_s,
    }
    document = {
        "duration_s": soak_s,
        "load": args.load,
        "workers": args.workers,
        "capacity_per_s": capacity,
        "target_per_s": targets,
        "summary": summary,
        "slices": [asdict(s) for s in slices],
        "rss_mb": [{"at_s": r["at_s"], "mb": {str(k): v for k, v in r["mb"].items()}} for r in rss],
        "machine": machine_info(wrk),
    }
    (args.out / "soak.json").write_text(json.dumps(document, indent=2))
    print(json.dumps(summary, indent=2))
    try:
        plot(slices, rss, args.out / "soak.png")
    except ImportError:
        say("matplotlib not installed: no plot")
    say(f"wrote {args.out / 'soak.json'}")
    return 0


def summarize(slices: list[Slice], rss: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    per_payload: dict[str, Any] = {}
    for name in names:
        mine = [s for s in slices if s.payload == name]
        per_payload[name] = {
            "errors": sum(s.errors for s in mine),
            "p50_ms_per_slice": [round(s.p50_ms, 2) for s in mine],
            "p99_ms_per_slice": [round(s.p99_ms, 2) for s in mine],
            "p99_drift": mine[-1].p99_ms / mine[0].p99_ms if mine and mine[0].p99_ms else None,
            "mean_rate_vs_target": sum(s.requests_per_s for s in mine)
            / max(1e-9, sum(s.target_per_s for s in mine)),
        }
    first, last = rss[0]["mb"], rss[-1]["mb"]
    # From the end of the first slice too: warm-up (arenas, caches) is not a leak.
    warm = rss[1]["mb"] if len(rss) > 2 else first
    growth = {
        str(pid): {
            "start_mb": round(first[pid], 1),
            "end_mb": round(last[pid], 1),
            "growth": last[pid] / first[pid] - 1,
            "growth_after_first_slice": last[pid] / warm[pid] - 1 if pid in warm else None,
        }
        for pid in last
        if pid in first
    }
    return {"payloads": per_payload, "worker_rss": growth}


def plot(slices: list[Slice], rss: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in sorted({s.payload for s in slices}):
        mine = [s for s in slices if s.payload == name]
        minutes = [s.started_s / 60 for s in mine]
        latency.plot(minutes, [s.p99_ms for s in mine], marker="o", label=f"{name} p99")
        latency.plot(minutes, [s.p50_ms for s in mine], linestyle="--", label=f"{name} p50")
    latency.set(xlabel="minutes into the soak", ylabel="ms", title="latency per slice")
    latency.legend()
    for pid in rss[0]["mb"]:
        points = [(r["at_s"] / 60, r["mb"][pid]) for r in rss if pid in r["mb"]]
        memory.plot(*zip(*points, strict=True), marker="o", label=f"worker {pid}")
    memory.set(xlabel="minutes into the soak", ylabel="RSS MB", title="worker memory")
    memory.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
