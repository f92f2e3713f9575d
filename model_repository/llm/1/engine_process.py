"""An engine core in a child process (the `engine_process` config parameter), as vLLM V1's EngineCore process.

In the Triton model's process, the thread that builds and sends responses competes for the GIL with the core's
loop thread: through Triton the fast core delivered 0.47 of its in-process throughput at 256 streams
(docs/PERFORMANCE.md). `EngineProcess` is a core.EngineCore that runs the real core (core.load_core) in a child
Python process (engine_process_child.py), so this process only parses requests and sends responses:

- submit sends the request and returns; the child tokenizes and validates, and a request it refuses ends with
  an Update(finish_reason="error") saying "invalid request: ..." as model.py says for a refusal in process;
- one receiving thread takes the child's batches of updates (engine_process_wire.py), joins each sequence's
  deltas of every batch already there (`drain`, response_queue.merge) and calls the sinks itself;
- one polling thread checks the requests' `is_cancelled` (the round trip to Triton stays here) at the cores'
  rate and tells the child;
- the child dying ends every request in flight with an error at once, and later submits fail saying so.

The child runs the interpreter of this environment (inside Triton's python backend, sys.executable may be the
stub: `python_interpreter`) on this process's import path.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import engine_process_wire as wire
from cancellation import CancellationPoller
from core import CORES, Prompt, Sampling, Sink, Update
from response_queue import merge

log = logging.getLogger("llm.engine_process")

CHILD = Path(__file__).with_name("engine_process_child.py")
CANCEL_POLL_INTERVAL_S = 0.05  # as the cores' loops poll
STOP_TIMEOUT_S = 30  # for the child to end its requests and exit before it is killed
LIVENESS_CHECK_S = 1.0  # how often a quiet receiver checks that the child still runs
MAX_MESSAGES_PER_DELIVERY = 1024  # batches joined into one delivery at most (a bound, not a tuning knob)


def drain(conn: Connection, limit: int = MAX_MESSAGES_PER_DELIVERY) -> tuple[list, bool]:
    """Every batch the child has sent so far (at least one message, waiting for it), as one list, and whether
    STOPPED came. Delivered together, each sequence's deltas of several engine steps become ONE Triton response:
    a response costs an IPC round trip (~250 us), so taking one step's batch at a time sends one response per
    token and caps the stream at ~4k tokens/s (seen on the H200 at 64 streams, 2026-12-04)."""
    batch: list = []
    for _ in range(limit):
        message = wire.receive(conn)
        if isinstance(message, list):
            batch += message
        elif message == (wire.STOPPED,):
            return batch, True
        if not conn.poll(0):
            break
    return batch, False


class EngineProcessError(RuntimeError):
    """The engine's process did not start, or is gone."""


@dataclass(eq=False)
class _Pending:
    sink: Sink
    is_cancelled: Callable[[], bool]
    n: int
    ended: set[int] = field(default_factory=set)  # sequence indices that had their last update
    cancel_sent: bool = False
    finished: bool = False  # its last update is about to reach the sink: is_cancelled must not be called again


def python_interpreter() -> str:
    """This environment's python: sys.executable when it is one, else the one in sys.prefix (the venv)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys.executable)] if sys.executable else []
    candidates += [Path(sys.prefix) / "bin" / name for name in (version, "python3", "python")]
    for path in candidates:
        if path.name.startswith("python") and path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise EngineProcessError(
        f"no python interpreter found for the engine process (tried {[str(c) for c in candidates]})"
    )


class EngineProcess:
    """core.EngineCore: the core named `core`, constructed in a child process with `options` (the cores' keyword
    arguments). Returns once the child's core is ready; raises EngineProcessError with the child's reason if it
    could not load."""

    def __init__(self, core: str, **options):
        if core not in CORES:  # as load_core says, before a process is started for it
            raise ValueError(f"engine_core must be one of {sorted(CORES)}, not {core!r}")
        self.core = core
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [python_interpreter(), str(CHILD), str(theirs.fileno())], pass_fds=[theirs.fileno()]
            )
        self._conn = Connection(ours.detach())
        self._send_lock = threading.Lock()
        # Triton's is_cancelled() on a request whose final response was sent crashes the server (SIGSEGV in
        # TRITONBACKEND_ResponseFactoryIsCancelled, seen at 16 streams): a request is marked finished under this
        # lock before its last update goes to its sink, and polled under it only while not finished.
        self._finish_lock = threading.Lock()
        self._active: dict[int, _Pending] = {}
        self._keys = itertools.count()
        self._failure: str | None = None
        self._stopping = threading.Event()
        wire.send(self._conn, {"core": core, "options": options, "sys_path": list(sys.path)})
        self.max_model_len: int = self._wait_ready()["max_model_len"]
        self._receiver = threading.Thread(target=self._receive, name="llm-engine-receiver", daemon=True)
        self._receiver.start()
        self._poller = threading.Thread(target=self._poll_cancellations, name="llm-engine-cancel", daemon=True)
        self._poller.start()

    # ------------------------------------------------------------------ core.EngineCore
    @property
    def num_active(self) -> int:
        return len(self._active)

    def submit(self, request_id: str, prompt: Prompt, sampling: Sampling, sink: Sink, is_cancelled) -> None:
        if self._failure is not None:
            raise EngineProcessError(self._failure)
        key = next(self._keys)
        self._active[key] = _Pending(sink, is_cancelled, sampling.n)
        try:
            self._send((wire.SUBMIT, key, request_id, prompt, sampling))
        except OSError as exc:  # the child is gone (the receiver ends what was in flight)
            self._finished([self._active.pop(key)])
            raise EngineProcessError(f"the engine process is gone ({exc})") from exc

    def shutdown(self) -> None:
        self._stopping.set()
        if self._process.poll() is None:
            try:
                self._send((wire.STOP,))
            except OSError:  # it has just died: the receiver sees that too
                pass
        self._receiver.join(STOP_TIMEOUT_S)  # the child ends its requests "error" and says STOPPED
        try:
            self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("the engine process did not stop within %s s; killing it", STOP_TIMEOUT_S)
            self._process.kill()
            self._process.wait()
        self._poller.join(STOP_TIMEOUT_S)
        self._end_all("the model is being unloaded")
        self._conn.close()

    # ------------------------------------------------------------------ the threads
    def _send(self, message: object) -> None:
        with self._send_lock:  # the caller's thread (submit) and the poller's send on one socket
            wire.send(self._conn, message)

    def _wait_ready(self) -> dict:
        while not self._conn.poll(LIVENESS_CHECK_S):
            if self._process.poll() is not None:
                break
        try:
            message = wire.receive(self._conn)
        except (EOFError, OSError):
            self._process.wait()
            raise EngineProcessError(
                f"the engine process for the {self.core} core {self._exit_reason()} before it was ready "
                "(its output is in the server's log)"
            ) from None
        assert isinstance(message, tuple)
        if message[0] == wire.FAILED:
            self._process.wait(STOP_TIMEOUT_S)
            raise EngineProcessError(f"the {self.core} engine core did not load: {message[1]}")
        return message[1]

    def _exit_reason(self) -> str:
        code = self._process.returncode
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def _receive(self) -> None:
        conn = self._conn
        while True:
            try:
                if not conn.poll(LIVENESS_CHECK_S):
                    if self._process.poll() is not None:
                        break
                    continue
                batch, stopped = drain(conn)
            except (EOFError, OSError):  # the child is gone
                break
            if batch:
                self._deliver(batch)
            if stopped:
                break
        if not self._stopping.is_set():
            try:  # its end of the socket closes as it dies: the exit status follows at once
                self._process.wait(STOP_TIMEOUT_S)
                reason = self._exit_reason()
            except subprocess.TimeoutExpired:  # it closed the socket yet runs: it cannot be trusted
                self._process.kill()
                reason = "closed its connection"
            self._failure = f"the engine process {reason}; the model must be reloaded"
            log.error("%s", self._failure)
            self._end_all(self._failure)

    def _deliver(self, batch: list) -> None:
        """One batch of the child's updates to their sinks, each sequence's deltas joined."""
        active = self._active
        items, finished = [], []
        for item in batch:
            key = item[0]
            pending = active.pop(key, None) if item[1] else active.get(key)
            if pending is None:
                continue
            update = Update(*item[2:])
            if update.finish_reason is not None:
                pending.ended.add(update.index)
            if item[1]:
                finished.append(pending)
            items.append((pending.sink, update))
        if finished:
            self._finished(finished)
        for (sink, _), update in merge(items).items():
            try:
                sink(update)
            except Exception:  # e.g. the client is gone; other requests must still get their updates
                log.exception("delivering an update failed")

    def _finished(self, requests: list[_Pending]) -> None:
        with self._finish_lock:
            for pending in requests:
                pending.finished = True

    def _end_all(self, error: str) -> None:
        """End every request in flight with `error` (each of its sequences that has not ended)."""
        while self._active:
            _, pending = self._active.popitem()
            self._finished([pending])
            for index in range(pending.n):
                if index not in pending.ended:
                    try:
                        pending.sink(Update("", "error", error, index=index))
                    except Exception:  # as in _deliver: the others must still end
                        log.exception("ending a request failed")

    def _poll_cancellations(self) -> None:
        poller = CancellationPoller()
        while not self._stopping.wait(CANCEL_POLL_INTERVAL_S):
            if self._failure is not None:
                return
            for key, pending in poller.due(list(self._active.items())):
                with self._finish_lock:
                    cancelled = not pending.finished and not pending.cancel_sent and pending.is_cancelled()
                if cancelled:
                    pending.cancel_sent = True
                    try:
                        self._send((wire.CANCEL, key))
                    except OSError:  # the child is gone: the receiver ends the requests
                        return
