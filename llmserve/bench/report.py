"""Statistics of a benchmark level, the JSON report, the table and the PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmserve.bench.loadgen import RequestResult

METRICS = ("output_tokens_per_s", "requests_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")


def summarize(results: list[RequestResult], concurrency: int) -> dict:
    """One level's numbers. ITL per request is (end - first token) / (tokens - 1), as genai-perf defines it."""
    ok = [r for r in results if r.error is None and r.first_token is not None]
    errors = sorted({r.error for r in results if r.error})
    level = {
        "concurrency": concurrency,
        "requests": len(results),
        "failed": len(results) - len(ok),
        "errors": errors[:5],
    }
    if not ok:
        return level
    start, end = min(r.start for r in ok), max(r.end for r in ok)
    seconds = max(end - start, 1e-9)
    tokens = sum(r.output_tokens for r in ok)
    firsts = [(r, r.first_token) for r in ok if r.first_token is not None]  # all of ok (typed for the checker)
    ttft = np.array([first - r.start for r, first in firsts]) * 1000
    itl = np.array([(r.end - first) / (r.output_tokens - 1) for r, first in firsts if r.output_tokens > 1]) * 1000
    level.update(
        seconds=round(seconds, 3),
        output_tokens=tokens,
        output_tokens_per_s=round(tokens / seconds, 1),
        requests_per_s=round(len(ok) / seconds, 2),
        ttft_p50_ms=round(float(np.percentile(ttft, 50)), 2),
        ttft_p99_ms=round(float(np.percentile(ttft, 99)), 2),
        itl_p50_ms=round(float(np.percentile(itl, 50)), 3) if itl.size else None,
        itl_p99_ms=round(float(np.percentile(itl, 99)), 3) if itl.size else None,
    )
    return level


def table(report: dict) -> str:
    head = f"{report['label']}: {report['target']} {report['input_tokens']}/{report['output_tokens']} tokens"
    rows = [head, "concurrency  requests  failed  tok/s      req/s   TTFT p50  TTFT p99  ITL p50  ITL p99 (ms)"]
    for lv in report["levels"]:
        if "output_tokens_per_s" not in lv:
            rows.append(f"{lv['concurrency']:>11}  {lv['requests']:>8}  {lv['failed']:>6}  (no successful request)")
            continue
        rows.append(
            f"{lv['concurrency']:>11}  {lv['requests']:>8}  {lv['failed']:>6}  {lv['output_tokens_per_s']:>9.1f}  "
            f"{lv['requests_per_s']:>6.2f}  {lv['ttft_p50_ms']:>8.1f}  {lv['ttft_p99_ms']:>8.1f}  "
            f"{lv['itl_p50_ms'] or 0:>7.2f}  {lv['itl_p99_ms'] or 0:>7.2f}"
        )
    return "\n".join(rows)


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


def plot(reports: list[dict], path: Path, title: str = "") -> None:
    """Throughput, TTFT and ITL against concurrency, one line per report (log-scaled concurrency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [
        ("output_tokens_per_s", None, "output tokens/s"),
        ("ttft_p50_ms", "ttft_p99_ms", "TTFT (ms)"),
        ("itl_p50_ms", "itl_p99_ms", "inter-token latency (ms)"),
    ]
    for axis, (p50, p99, ylabel) in zip(axes, panels, strict=True):
        for report in reports:
            levels = [lv for lv in report["levels"] if lv.get(p50) is not None]
            x = [lv["concurrency"] for lv in levels]
            line = axis.plot(x, [lv[p50] for lv in levels], marker="o", label=report["label"])[0]
            if p99:
                axis.plot(x, [lv[p99] for lv in levels], marker="x", linestyle="--", color=line.get_color())
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent requests")
        axis.set_ylabel(ylabel + (" (p50 solid, p99 dashed)" if p99 else ""))
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or ", ".join(r["label"] for r in reports))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
