"""Print the table of bench/nvidia_tools/compare.py's results.json: per level and tool, the median over rounds of
output tokens/s, TTFT p50 and ITL p50, the rounds' spread, and each NVIDIA tool's ratio to `llmserve bench` on
the same target (perf_analyzer / llmserve's Triton target, aiperf / its OpenAI target).

    python bench/nvidia_tools/summarize.py OUT/nvtools/results.json [--markdown]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

METRICS = (("output_tokens_per_s", "tok/s"), ("ttft_p50_ms", "TTFT p50 ms"), ("itl_p50_ms", "ITL p50 ms"))
REFERENCE = {"perf_analyzer": "llmserve-triton", "aiperf": "llmserve-openai"}  # the same target, our load generator


def medians(rows: list[dict]) -> dict[tuple[int, str], dict]:
    """(level, tool) -> {metric: median over the rounds, metric_spread: (max - min) / median, rounds: n}."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for row in rows:
        if row.get("failed", 0) < row.get("requests", 0) and row.get("output_tokens_per_s"):
            groups.setdefault((row["concurrency"], row["tool"]), []).append(row)
    out = {}
    for key, group in groups.items():
        summary: dict = {"rounds": len(group), "failed": sum(r.get("failed", 0) for r in group)}
        for metric, _ in METRICS:
            values = [r[metric] for r in group if r.get(metric) is not None]
            if values:
                middle = statistics.median(values)
                summary[metric] = middle
                summary[f"{metric}_spread"] = (max(values) - min(values)) / middle if middle else None
        out[key] = summary
    return out


def table(report: dict, markdown: bool = False) -> str:
    summary = medians(report["rows"])
    head = ["level", "tool", "rounds", *(name for _, name in METRICS), "spread tok/s", "vs llmserve bench"]
    lines = []
    for level in report["levels"]:
        for tool in report["tools"]:
            s = summary.get((level, tool))
            if s is None:
                lines.append([str(level), tool, "0", "(no result)", "", "", "", ""])
                continue
            ratios = ""
            reference = summary.get((level, REFERENCE.get(tool, "")))
            if reference:  # tok/s, TTFT and ITL of the NVIDIA tool over ours
                ratios = " / ".join(
                    f"{s[m] / reference[m]:.2f}" if s.get(m) and reference.get(m) else "-" for m, _ in METRICS
                )
            spread = s.get("output_tokens_per_s_spread")
            lines.append(
                [
                    str(level),
                    tool,
                    str(s["rounds"]),
                    *(f"{s[m]:.1f}" if s.get(m) is not None else "-" for m, _ in METRICS),
                    f"{spread:.0%}" if spread is not None else "-",
                    ratios,
                ]
            )
    note = "vs llmserve bench: tok/s / TTFT / ITL ratios to llmserve bench on the same target (1.00 = equal)"
    if markdown:
        rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        rows += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(rows) + f"\n\n{note}"
    widths = [max(len(x) for x in column) for column in zip(head, *lines, strict=False)]
    rows = ["  ".join(x.ljust(w) for x, w in zip(line, widths, strict=False)) for line in [head, *lines]]
    return "\n".join(rows) + f"\n{note}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results.json, or the folder that holds it")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table (docs/PERFORMANCE.md)")
    args = parser.parse_args(argv)
    path = args.results / "results.json" if args.results.is_dir() else args.results
    report = json.loads(path.read_text())
    print(f"{report['input_tokens']}/{report['output_tokens']} tokens, {report['rounds']} round(s) interleaved")
    print(table(report, args.markdown))


if __name__ == "__main__":
    main()
