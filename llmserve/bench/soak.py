"""A bounded soak test: many streaming chat clients in sessions for a set time, some of them hanging up at random;
then every session is read back to check that each reply was stored exactly once (docs/SESSIONS.md).

    python -m llmserve.bench.soak --url http://127.0.0.1:8000 --clients 200 --duration 300 --out soak/

Each client owns one session and chats in it one message at a time, over SSE (`/v1/chat/completions` with
`session_id`) or, for a `--ws-fraction` of them, over `/v1/chat/ws`. A `--disconnect-fraction` of the requests
hang up after a random number of text deltas (SSE: the connection is closed; WebSocket: half send `stop`, half
close the socket). The front-end's RSS is sampled from `GET /v1/system`. Writes `soak.json` and `soak.png`; exits 1
when an unexpected 5xx, a transport error or a storage violation was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from llmserve.bench.soak_report import plot, server_5xx, summarize, verify_sessions

EXPECTED_REFUSALS = {"too_many_streams", "server_overloaded", "rate_limit_exceeded"}  # configured caps


@dataclass
class Turn:
    """One chat message sent by a client and what became of it."""

    client: int
    session_id: str
    content: str  # unique: how the stored user message is recognised
    transport: str  # "sse" or "ws"
    outcome: str = (
        "pending"  # completed | disconnected | stopped | refused | http_4xx | http_5xx | stream_error | transport_error
    )
    status: int | None = None
    reply: str = ""
    finish_reason: str | None = None
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0


@dataclass
class Soak:
    url: str
    model: str
    max_tokens: int
    disconnect_fraction: float
    headers: dict[str, str]
    deadline: float
    rng: random.Random
    turns: list[Turn] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)

    def hang_up_after(self) -> int | None:
        """Text deltas to read before hanging up, or None to read the whole reply."""
        if self.rng.random() >= self.disconnect_fraction:
            return None
        return self.rng.randint(1, max(1, self.max_tokens - 1))


async def sse_turn(soak: Soak, client: httpx.AsyncClient, turn: Turn) -> None:
    body = {
        "model": soak.model,
        "session_id": turn.session_id,
        "max_tokens": soak.max_tokens,
        "stream": True,
        "messages": [{"role": "user", "content": turn.content}],
    }
    hang_up = soak.hang_up_after()
    deltas = 0
    async with client.stream("POST", f"{soak.url}/v1/chat/completions", json=body) as response:
        turn.status = response.status_code
        if response.status_code != 200:
            classify_refusal(turn, response.status_code, await response.aread())
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                turn.outcome = "completed" if turn.finish_reason else "stream_error"
                return
            chunk = json.loads(line[6:])
            if "error" in chunk:
                turn.outcome, turn.error = "stream_error", json.dumps(chunk["error"])[:300]
                return
            for choice in chunk.get("choices", []):
                turn.reply += choice["delta"].get("content") or ""
                turn.finish_reason = choice.get("finish_reason") or turn.finish_reason
                deltas += bool(choice["delta"].get("content"))
            if hang_up is not None and deltas >= hang_up and not turn.finish_reason:
                turn.outcome = "disconnected"  # leaving the block closes the connection
                return
    turn.outcome = "stream_error"
    turn.error = "the event stream ended without [DONE]"


def classify_refusal(turn: Turn, status: int, body: bytes) -> None:
    try:
        code = json.loads(body)["error"].get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        code = None
    turn.error = body[:300].decode(errors="replace")
    if status in (429, 503) and code in EXPECTED_REFUSALS:
        turn.outcome = "refused"
    else:
        turn.outcome = "http_5xx" if status >= 500 else "http_4xx"


async def ws_turn(soak: Soak, ws, turn: Turn) -> bool:
    """One chat on an open socket; False when the socket was closed (by us, to hang up)."""
    hang_up = soak.hang_up_after()
    how = soak.rng.choice(("stop", "close")) if hang_up is not None else None
    await ws.send(
        json.dumps(
            {
                "type": "chat",
                "content": turn.content,
                "session_id": turn.session_id,
                "settings": {"max_tokens": soak.max_tokens, "model": soak.model},
            }
        )
    )
    deltas = 0
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "delta":
            turn.reply += frame["content"]
            deltas += 1
            if hang_up is not None and deltas == hang_up:
                if how == "close":
                    turn.outcome = "disconnected"
                    return False
                await ws.send(json.dumps({"type": "stop"}))
        elif frame["type"] == "done":
            turn.finish_reason = frame["finish_reason"]
            turn.outcome = "stopped" if frame["finish_reason"] == "cancelled" else "completed"
            return True
        elif frame["type"] == "error":
            turn.error = json.dumps(frame)[:300]
            turn.outcome = "refused" if frame["code"] in EXPECTED_REFUSALS else "stream_error"
            return True


async def run_client(soak: Soak, index: int, http: httpx.AsyncClient, use_ws: bool) -> None:
    for attempt in range(3):  # 200 clients connect at once; a failed start is retried, not a lost client
        try:
            created = await http.post(f"{soak.url}/v1/sessions", json={"title": f"soak client {index}"})
            created.raise_for_status()
            break
        except httpx.HTTPError as exc:
            print(f"soak: client {index} could not create its session: {type(exc).__name__}: {exc}", file=sys.stderr)
            if attempt == 2:
                raise
            await asyncio.sleep(1)
    session_id = created.json()["id"]
    ws = None
    sequence = 0
    try:
        while time.monotonic() < soak.deadline:
            turn = Turn(
                index,
                session_id,
                f"soak {index}.{sequence}: say something short.",
                "ws" if use_ws else "sse",
                started=time.monotonic(),
            )
            sequence += 1
            soak.turns.append(turn)
            try:
                if use_ws:
                    if ws is None:
                        # No client pings: the server sends its own keepalive, and a starved client loop would
                        # time out its own pings and count the server's fault.
                        ws = await connect(
                            soak.url.replace("http", "ws", 1) + "/v1/chat/ws",
                            ping_interval=None,
                            additional_headers=soak.headers,
                            max_size=2**22,
                            open_timeout=120,
                        )
                        assert json.loads(await ws.recv())["type"] == "ready"
                    if not await ws_turn(soak, ws, turn):
                        await ws.close()
                        ws = None
                else:
                    await sse_turn(soak, http, turn)
            except (httpx.HTTPError, OSError, TimeoutError, WebSocketException) as exc:  # recorded; the client goes on
                turn.outcome, turn.error = "transport_error", f"{type(exc).__name__}: {exc}"[:300]
                ws = None
            turn.ended = time.monotonic()
            if turn.outcome in ("disconnected", "stopped"):
                await wait_until_stored(soak, http, turn)  # keeps one turn at a time per session
    finally:
        if ws is not None:
            await ws.close()


async def wait_until_stored(soak: Soak, http: httpx.AsyncClient, turn: Turn, timeout: float = 30) -> None:
    """A hung-up turn is stored when the server notices; wait for it so that the next turn comes after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = await http.get(f"{soak.url}/v1/sessions/{turn.session_id}/messages", params={"limit": 1000})
            if response.status_code == 200 and any(m["content"] == turn.content for m in response.json()["data"]):
                return
        except httpx.HTTPError as exc:  # a poll; the next one decides
            print(f"soak: polling {turn.session_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        await asyncio.sleep(1)
    turn.error = f"not stored {timeout:g} s after hanging up"


async def sample_rss(soak: Soak, http: httpx.AsyncClient, started: float, interval: float) -> None:
    while True:
        try:
            response = await http.get(f"{soak.url}/v1/system")
            soak.rss.append((round(time.monotonic() - started, 1), response.json()["memory"]["process_rss_bytes"]))
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            print(f"soak: RSS sample failed: {exc}", file=sys.stderr)
        await asyncio.sleep(interval)


async def progress(soak: Soak, started: float, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        counts = Counter(t.outcome for t in soak.turns)
        rss = f"{soak.rss[-1][1] / 2**20:.0f} MiB" if soak.rss else "?"
        print(
            f"soak: {time.monotonic() - started:5.0f} s  front-end RSS {rss}  "
            + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())),
            file=sys.stderr,
            flush=True,
        )


async def run_soak(
    url: str,
    model: str,
    clients: int,
    duration: float,
    max_tokens: int = 8,
    disconnect_fraction: float = 0.2,
    ws_fraction: float = 0.2,
    api_key: str | None = None,
    seed: int = 0,
    rss_interval: float = 5,
    progress_interval: float = 10,
) -> dict:
    """Run the soak and verify storage; the report as a dict (see soak_report.summarize)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.monotonic()
    soak = Soak(
        url.rstrip("/"), model, max_tokens, disconnect_fraction, headers, started + duration, random.Random(seed)
    )
    # Idle connections expire before uvicorn's 5 s keep-alive does, so no request races a server-side close.
    limits = httpx.Limits(max_connections=clients + 16, max_keepalive_connections=clients + 16, keepalive_expiry=2)
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(600, connect=60), limits=limits) as http:
        try:
            metrics_before = server_5xx((await http.get(f"{soak.url}/metrics")).text)
        except httpx.HTTPError as exc:
            raise SystemExit(
                f"soak: cannot talk to {soak.url} ({type(exc).__name__}: {exc}); is the server up (llmserve serve)?"
            ) from None
        background = [
            asyncio.create_task(sample_rss(soak, http, started, rss_interval)),
            asyncio.create_task(progress(soak, started, progress_interval)),
        ]
        ws_clients = round(clients * ws_fraction)
        try:
            await asyncio.gather(*(run_client(soak, i, http, use_ws=i < ws_clients) for i in range(clients)))
        finally:
            for task in background:
                task.cancel()
        ran_s = time.monotonic() - started
        soak.rss.append(
            (round(ran_s, 1), (await http.get(f"{soak.url}/v1/system")).json()["memory"]["process_rss_bytes"])
        )
        violations = await verify_sessions(http, soak.url, soak.turns)
        server_errors = server_5xx((await http.get(f"{soak.url}/metrics")).text) - metrics_before
    return summarize(
        soak.turns,
        soak.rss,
        violations,
        server_errors,
        ran_s,
        {
            "url": url,
            "model": model,
            "clients": clients,
            "ws_clients": ws_clients,
            "duration_s": duration,
            "max_tokens": max_tokens,
            "disconnect_fraction": disconnect_fraction,
            "seed": seed,
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmserve.bench.soak",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the front-end (not /v1)")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients, one session each")
    parser.add_argument("--duration", type=float, default=300, help="seconds to keep sending new messages")
    parser.add_argument("--max-tokens", type=int, default=8, help="max_tokens of every message")
    parser.add_argument("--disconnect-fraction", type=float, default=0.2, help="share of messages hung up early")
    parser.add_argument("--ws-fraction", type=float, default=0.2, help="share of clients on the WebSocket")
    parser.add_argument("--api-key", help="sent as Authorization: Bearer (when the server has auth on)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random hang-ups")
    parser.add_argument("--rss-interval", type=float, default=5, help="seconds between RSS samples")
    parser.add_argument("--out", default="soak", help="folder for soak.json and soak.png")
    ns = parser.parse_args(argv)
    if (
        ns.clients < 1
        or ns.duration <= 0
        or ns.max_tokens < 2
        or not 0 <= ns.disconnect_fraction <= 1
        or not 0 <= ns.ws_fraction <= 1
    ):
        parser.error("--clients >= 1, --duration > 0, --max-tokens >= 2, fractions between 0 and 1 please")
    report = asyncio.run(
        run_soak(
            ns.url,
            ns.model,
            ns.clients,
            ns.duration,
            ns.max_tokens,
            ns.disconnect_fraction,
            ns.ws_fraction,
            ns.api_key,
            ns.seed,
            ns.rss_interval,
        )
    )
    args = argv if argv is not None else sys.argv[1:]
    shown = [
        "***"
        if i and args[i - 1] == "--api-key"
        else arg.split("=")[0] + "=***"
        if arg.startswith("--api-key=")
        else arg
        for i, arg in enumerate(args)
    ]
    report["command"] = " ".join(["python -m llmserve.bench.soak", *shown])  # never the key
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "soak.png")
    print(json.dumps({k: v for k, v in report.items() if k not in ("rss_samples", "violations")}, indent=2))
    print(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
