"""Draw the paged fast core's run (paged-inprocess.json of bench/gpu_perf/paged_inprocess.py) into one PNG:
throughput per level (median, min-max of the repeats) against the slot core's earlier numbers, inter-token latency
and TTFT p99 per level, and the prefix-cache case's cold vs warm TTFT.

  python bench/gpu_perf/plot_paged.py docs/perf/<run>/paged-inprocess.json [--baseline docs/perf/.../inprocess.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--baseline", type=Path, help="an earlier inprocess.json (the slot core) to draw beside")
    args = parser.parse_args()
    run = json.loads(args.run.read_text())
    levels = run.get("levels", [])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    streams = [lv["concurrency"] for lv in levels]
    median = [lv["output_tokens_per_s_median"] for lv in levels]
    low = [m - lv["output_tokens_per_s_min"] for m, lv in zip(median, levels, strict=True)]
    high = [lv["output_tokens_per_s_max"] - m for m, lv in zip(median, levels, strict=True)]
    ax = axes[0]
    ax.errorbar(streams, median, yerr=[low, high], marker="o", capsize=4, label="paged fast core (median, min-max)")
    if args.baseline:
        base = json.loads(args.baseline.read_text()).get("fast", [])
        ax.plot([r["concurrency"] for r in base], [r["output_tokens_per_s"] for r in base], "s--", label="slot core")
    ax.set(xscale="log", xlabel="concurrent streams", ylabel="output tok/s", title="in-process throughput")
    ax.legend()
    ax = axes[1]
    ax.plot(streams, [lv["itl_p50_ms"] for lv in levels], "o-", label="ITL p50 (ms)")
    ax.plot(streams, [lv["ttft_p99_ms"] / 100 for lv in levels], "s-", label="TTFT p99 (100 ms)")
    ax.set(xscale="log", xlabel="concurrent streams", title="latency")
    ax.legend()
    ax = axes[2]
    prefix = run.get("prefix_cache")
    if prefix:
        ax.bar(["cold", "warm"], [prefix["cold_ttft_ms"], prefix["warm_ttft_ms"]], color=["tab:red", "tab:green"])
        ax.set(ylabel="TTFT (ms)", title=f"{prefix['prefix_tokens']}-token shared prefix + {prefix['new_tokens']} new")
    fig.suptitle(f"{run.get('device', '')} {run.get('shape', '')} {run.get('date', '')}")
    fig.tight_layout()
    out = args.run.with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
