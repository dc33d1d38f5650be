"""results.png: the service by concurrency, batching against no batching, and batch throughput."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt

from bench.raw import RawFigures
from bench.report import (
    NOISY_CORES,
    REFERENCE_BATCH,
    TARGET_BATCH_SHARE_OF_RAW,
    TARGET_C1_P50_MS,
    TARGET_C32_P99_MS,
    TARGET_C32_RPS,
    ScenarioResult,
)

_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def plot(results: list[ScenarioResult], raw: RawFigures, title: str, path: Path) -> None:
    configs = list(dict.fromkeys(r.config for r in results))
    figure, (throughput, latency, batches) = plt.subplots(1, 3, figsize=(17, 5.2))
    for colour, config in zip(_COLOURS, configs, strict=False):
        runs = sorted(
            (r for r in results if r.config == config and r.payload == "json"),
            key=lambda r: r.concurrency,
        )
        levels = [r.concurrency for r in runs]
        throughput.plot(
            levels, [r.ok_requests_per_s for r in runs], "o-", color=colour, label=f"JSON, {config}"
        )
        latency.plot(
            levels, [r.load.p99_ms for r in runs], "o-", color=colour, label=f"p99, {config}"
        )
        latency.plot(
            levels,
            [r.load.p50_ms for r in runs],
            "o--",
            color=colour,
            alpha=0.6,
            label=f"p50, {config}",
        )
        for png in (r for r in results if r.config == config and r.payload == "png"):
            throughput.plot(
                [png.concurrency],
                [png.ok_requests_per_s],
                "s",
                color=colour,
                markerfacecolor="none",
                markersize=9,
                label=f"PNG upload, {config}",
            )
    noisy = [r for r in results if r.images_per_request == 1 and _noisy(r)]
    if noisy:
        throughput.plot(
            [r.concurrency for r in noisy],
            [r.ok_requests_per_s for r in noisy],
            "x",
            color="red",
            markersize=11,
            label=f"noisy: other processes used > {NOISY_CORES:.0%} of a core",
        )
    throughput.axhline(
        raw.batch1.calls_per_s,
        color="grey",
        ls=":",
        label=f"raw onnxruntime, batch-1 calls/s ({raw.batch1.calls_per_s:,.0f})",
    )
    throughput.axhline(
        TARGET_C32_RPS, color="red", ls="--", lw=1, label=f"target at c=32 ({TARGET_C32_RPS:,.0f})"
    )
    throughput.set_ylim(bottom=0)
    throughput.set(
        xscale="log",
        xlabel="concurrent connections (wrk)",
        ylabel="requests/s",
        title="Single-image requests/s",
    )
    latency.axhline(
        TARGET_C32_P99_MS,
        color="red",
        ls="--",
        lw=1,
        label=f"target p99 at c=32 ({TARGET_C32_P99_MS:g} ms)",
    )
    latency.axhline(
        TARGET_C1_P50_MS,
        color="purple",
        ls="--",
        lw=1,
        label=f"target p50 at c=1 ({TARGET_C1_P50_MS:g} ms)",
    )
    latency.axhline(
        raw.batch1.p50_ms,
        color="grey",
        ls=":",
        label=f"raw onnxruntime batch-1 p50 ({raw.batch1.p50_ms:.3f} ms)",
    )
    latency.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent connections (wrk)",
        ylabel="latency, ms",
        title="Single-image JSON latency",
    )

    best = [raw.best_batch(b) for b in raw.batch_sizes]
    labels = [f"raw b{t.batch}\n{t.intra_op_threads} thr." for t in best]
    values = [t.images_per_s for t in best]
    colours = ["grey"] * len(values)
    for colour, config in zip(_COLOURS, configs, strict=False):
        for r in results:
            if r.config == config and r.images_per_request > 1:
                labels.append(f"{config}\nc={r.concurrency}" + ("\nnoisy" if _noisy(r) else ""))
                values.append(r.images_per_s)
                colours.append(colour)
    bars = batches.bar(range(len(values)), values, color=colours)
    batches.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    limit = raw.images_per_s(REFERENCE_BATCH)
    batches.axhline(
        TARGET_BATCH_SHARE_OF_RAW * limit,
        color="red",
        ls="--",
        lw=1,
        label=f"target: {TARGET_BATCH_SHARE_OF_RAW:.0%} of raw batch {REFERENCE_BATCH}",
    )
    batches.set_xticks(range(len(values)), labels, fontsize=8)
    batches.set(ylabel="images/s", title=f"Binary uint8 batches of {REFERENCE_BATCH} vs raw")
    levels = sorted({r.concurrency for r in results if r.images_per_request == 1})
    for axis in (throughput, latency):
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.minorticks_off()
    for axis in (throughput, latency, batches):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _noisy(result: ScenarioResult) -> bool:
    return result.others_cpu_s / result.load.duration_s > NOISY_CORES
