"""Keep Triton running under the front-end: when it dies, start it again with exponential backoff.

While Triton is down the front-end answers 503 (`/ready`, generation) and its gRPC channel reconnects by itself
once Triton is back; the front-end is never restarted. After repeated failures the wait between attempts stays
at `max_backoff_s`, every attempt is logged, and `/ready` stays 503 so that a load balancer sees it. By default
restarts never give up; with `max_attempts`, that many failed restarts in a row call `give_up` (`serve` then
exits with code 1, so that systemd, Docker or Kubernetes restarts the whole thing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from llmserve.triton import TritonError, TritonProcess

FIRST_BACKOFF_S = 1.0
STABLE_S = 60.0  # up this long after a restart: the next failure starts the backoff from FIRST_BACKOFF_S again
POLL_S = 0.2


class TritonSupervisor:
    def __init__(
        self,
        triton: TritonProcess,
        startup_timeout_s: float,
        max_backoff_s: float,
        say: Callable[[str], None],
        max_attempts: int = 0,
        give_up: Callable[[], None] = lambda: None,
    ):
        self.triton = triton
        self.startup_timeout_s = startup_timeout_s
        self.max_backoff_s = max_backoff_s
        self.say = say
        self.max_attempts = max_attempts  # failed restarts in a row before giving up; 0: never
        self._give_up = give_up
        self.gave_up = False
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # start and stop of the process never interleave
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start Triton and wait until it is ready (raises TritonError), then watch it in a thread."""
        with self._lock:
            self.triton.start()
        self.triton.wait_ready(self.startup_timeout_s, progress=self.say)
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> int | None:
        """Stop watching, then stop Triton; its exit code."""
        self._stopping.set()
        with self._lock:
            code = self.triton.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return code

    def _watch(self) -> None:
        backoff = FIRST_BACKOFF_S
        up_since = time.monotonic()
        failures = 0  # failed restarts since Triton was last ready
        while not self._stopping.wait(POLL_S):
            code = self.triton.exit_code()
            if code is None:
                continue
            self.triton.kill_leftovers()
            if self.max_attempts and failures >= self.max_attempts:
                self.say(
                    f"ERROR: giving up: {failures} restarts of Triton in a row failed "
                    "(triton_restart_max_attempts); stopping so that a process manager can start llmserve again"
                )
                self.gave_up = True
                self._give_up()
                return
            if time.monotonic() - up_since >= STABLE_S:
                backoff = FIRST_BACKOFF_S
            self.say(
                f"ERROR: tritonserver exited with code {code}; the API answers 503 until it is back. "
                f"Restarting it in {backoff:.0f} s (restart {self.restarts + 1})"
            )
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff_s)
            if self._restart():
                up_since, failures = time.monotonic(), 0
            else:
                failures += 1

    def _restart(self) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self.restarts += 1
            self.triton.start()
        started = time.monotonic()
        try:
            self.triton.wait_ready(self.startup_timeout_s, progress=self.say)
        except TritonError as exc:
            if not self._stopping.is_set():
                self.say(f"ERROR: Triton restart {self.restarts} failed: {exc}")
                with self._lock:
                    self.triton.stop()  # not ready in time: make sure it is gone before the next attempt
            return False
        self.say(
            f"Triton restarted (restart {self.restarts}) and ready in {time.monotonic() - started:.1f} s; "
            "the API serves again"
        )
        return True
