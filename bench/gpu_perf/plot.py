"""Draw docs/PERFORMANCE.md's plots from one GPU run's JSON files (inprocess.json, triton-fast.json, openai-fast.json)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmserve.bench.report import plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path, help="folder with the run's JSON files")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    for costs in sorted(args.run.glob("sampling-costs-*.json")):
        sampling_bars(json.loads(costs.read_text()), costs.with_suffix(".png"), args.title)
    if not (args.run / "inprocess.json").is_file():
        return
    inprocess = json.loads((args.run / "inprocess.json").read_text())
    reports = [
        {"label": "fast core, in-process", "levels": inprocess["fast"]},
        *(json.loads((args.run / f"{name}.json").read_text()) for name in ("triton-fast", "openai-fast")),
    ]
    reports[1]["label"], reports[2]["label"] = "fast core via Triton gRPC", "fast core via front-end (OpenAI SSE)"
    plot(reports, args.run / "sweep.png", args.title)
    bars(inprocess, reports, args.run / "throughput-256.png", args.title)


def bars(inprocess: dict, reports: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values = [], []
    for row in inprocess["hf_static"]:
        names.append(f"HF generate\nstatic batch {row['batch']}")
        values.append(row["output_tokens_per_s"])
    for report in reports:
        level = next((lv for lv in report["levels"] if lv["concurrency"] == 256), None)
        if level:
            names.append(report["label"].replace(", ", "\n").replace(" via ", "\nvia "))
            values.append(level["output_tokens_per_s"])
    fig, axis = plt.subplots(figsize=(11, 4.5))
    bars = axis.bar(range(len(values)), values, color=["#999999"] * len(inprocess["hf_static"]) + ["#1f77b4"] * 9)
    axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    axis.set_xticks(range(len(names)), names, fontsize=8)
    axis.set_ylabel("output tokens/s (256 concurrent 128/128 requests)")
    axis.set_title(title or "256 concurrent requests")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sampling_bars(costs: dict, path: Path, title: str) -> None:
    """sampling_costs.py's medians relative to our greedy, one bar per variant, with each round's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(costs["median"])
    greedy = costs["median"]["ours:greedy"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(range(len(names)), [costs["median"][n] / greedy for n in names], color="#4c72b0")
    for i, name in enumerate(names):
        ax.plot([i] * len(costs["runs"][name]), [v / greedy for v in costs["runs"][name]], "k.", markersize=4)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(names)), [n.replace("ours:", "") for n in names], rotation=30, ha="right")
    ax.set_ylabel("output tok/s / our greedy")
    ax.set_title(title or f"sampling features, {costs['concurrency']} streams, {costs['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
