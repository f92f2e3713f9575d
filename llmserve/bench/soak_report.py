"""The soak test's checks and report: every turn stored as docs/SESSIONS.md says, server-side 5xx from
/metrics, outcomes, front-end RSS over time; JSON and a PNG plot."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from llmserve.bench.soak import Turn

STORED_ONCE = {"completed", "disconnected", "stopped"}  # the user message must be stored exactly once
NEVER_STORED = {"refused", "http_4xx"}  # rejected before generation: nothing is stored
FAILURES = {"http_5xx", "stream_error", "transport_error"}


def server_5xx(metrics_text: str) -> int:
    """5xx responses the front-end counted (llmserve_http_requests_total)."""
    return int(
        sum(
            s.value
            for f in text_string_to_metric_families(metrics_text)
            for s in f.samples
            if s.name == "llmserve_http_requests_total" and s.labels.get("status", "").startswith("5")
        )
    )


async def session_messages(http: httpx.AsyncClient, url: str, session_id: str) -> list[dict]:
    messages: list[dict] = []
    after = None
    while True:
        params = {"limit": 1000, **({"after": after} if after is not None else {})}
        response = await http.get(f"{url}/v1/sessions/{session_id}/messages", params=params)
        response.raise_for_status()
        page = response.json()
        messages += page["data"]
        if not page["has_more"]:
            return messages
        after = page["data"][-1]["id"]


def check_session(turns: list[Turn], messages: list[dict]) -> list[str]:
    """What in one session's stored messages contradicts what its client saw (empty when all is well)."""
    problems = []
    by_content = {t.content: t for t in turns}
    positions: dict[str, list[int]] = defaultdict(list)
    for i, message in enumerate(messages):
        if message["role"] == "user":
            if message["content"] not in by_content:
                problems.append(f"message {message['id']}: a user message no client sent")
            positions[message["content"]].append(i)
        elif i == 0 or messages[i - 1]["role"] != "user":
            problems.append(f"message {message['id']}: an assistant message that follows no question (a duplicate?)")
    for turn in turns:
        where = positions.get(turn.content, [])
        name = f"{turn.session_id} {turn.content[:20]!r} ({turn.transport} {turn.outcome})"
        if turn.outcome in STORED_ONCE and len(where) != 1:
            problems.append(f"{name}: user message stored {len(where)} times, expected once")
        elif turn.outcome in NEVER_STORED and where:
            problems.append(f"{name}: rejected before generation, yet stored {len(where)} times")
        elif len(where) > 1:
            problems.append(f"{name}: user message stored {len(where)} times")
        if len(where) != 1:
            continue
        following = messages[where[0] + 1] if where[0] + 1 < len(messages) else None
        reply = following if following and following["role"] == "assistant" else None
        if turn.outcome == "completed":
            if reply is None or reply["content"] != turn.reply or reply["finish_reason"] != turn.finish_reason:
                problems.append(
                    f"{name}: stored reply {reply and (reply['content'], reply['finish_reason'])!r} "
                    f"differs from the one received {(turn.reply, turn.finish_reason)!r}"
                )
        elif turn.outcome in ("disconnected", "stopped") and reply is not None:
            if reply["finish_reason"] not in ("cancelled", "stop", "length") or not reply["content"].startswith(
                turn.reply
            ):
                problems.append(
                    f"{name}: stored partial reply {(reply['content'], reply['finish_reason'])!r} is not "
                    f"'cancelled' and a continuation of what was received {turn.reply!r}"
                )
    return problems


async def verify_sessions(http: httpx.AsyncClient, url: str, turns: list[Turn]) -> list[str]:
    by_session: dict[str, list[Turn]] = defaultdict(list)
    for turn in turns:
        by_session[turn.session_id].append(turn)
    problems = []
    for session_id, session_turns in by_session.items():
        problems += check_session(session_turns, await session_messages(http, url, session_id))
    return problems


def summarize(
    turns: list[Turn],
    rss: list[tuple[float, int]],
    violations: list[str],
    server_errors: int,
    ran_s: float,
    config: dict,
) -> dict:
    outcomes = Counter(t.outcome for t in turns)
    by_transport = {
        transport: dict(Counter(t.outcome for t in turns if t.transport == transport))
        for transport in sorted({t.transport for t in turns})
    }
    completed = [t for t in turns if t.outcome == "completed"]
    latencies = sorted(t.ended - t.started for t in completed)
    rss_mib = [round(value / 2**20, 1) for _, value in rss]
    failures = sum(outcomes[o] for o in FAILURES)
    report = {
        **config,
        "ran_s": round(ran_s, 1),
        "requests": len(turns),
        "outcomes": dict(sorted(outcomes.items())),
        "outcomes_by_transport": by_transport,
        "completed_per_s": round(len(completed) / ran_s, 2) if ran_s else None,
        "completed_latency_p50_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
        "completed_latency_max_s": round(latencies[-1], 2) if latencies else None,
        "unexpected_5xx": outcomes["http_5xx"],
        "server_5xx_counted": server_errors,
        "refused_by_caps": outcomes["refused"],
        "failure_examples": sorted({t.error or t.outcome for t in turns if t.outcome in FAILURES})[:10],
        "hung_up_not_stored_in_time": sum(1 for t in turns if t.outcome in ("disconnected", "stopped") and t.error),
        "storage_violations": len(violations),
        "violations": violations[:50],
        "rss_start_mib": rss_mib[0] if rss_mib else None,
        "rss_end_mib": rss_mib[-1] if rss_mib else None,
        "rss_max_mib": max(rss_mib) if rss_mib else None,
        "rss_samples": [[t, mib] for (t, _), mib in zip(rss, rss_mib, strict=True)],
    }
    report["passed"] = not (failures or violations or server_errors)
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    times = [t for t, _ in report["rss_samples"]]
    ax.plot(times, [mib for _, mib in report["rss_samples"]], marker=".", label="front-end RSS")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    outcomes = ", ".join(f"{k} {v}" for k, v in report["outcomes"].items())
    ax.set_title(f"soak: {report['clients']} clients, {report['requests']} requests\n{outcomes}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
