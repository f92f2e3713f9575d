"""The engine core's own process (started by engine_process.py as `python engine_process_child.py FD`): it loads
the core, submits what the parent sends (tokenizing and validating here), and sends the core's updates back in
batches from one flushing thread, so the core's loop thread shares this process's GIL with little else.

FD is this end of the parent's socket pair. The parent's end closing (the Triton model process is gone) stops
this process as STOP does.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from multiprocessing.connection import Connection

import engine_process_wire as wire

log = logging.getLogger("llm.engine_process_child")

_FLUSHED = object()


class Outbox:
    """The core's sinks enqueue (key, update); one thread takes whatever piled up and sends it as one batch,
    marking each request's last update (every one of its sequences ended)."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.remaining: dict[int, int] = {}  # key -> its sequences not ended yet (set before it is submitted)
        self.cancelled: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="llm-engine-outbox", daemon=True)
        self._thread.start()

    def sink(self, key: int):
        put = self._queue.put
        return lambda update: put((key, update))

    def refuse(self, key: int, error: str) -> None:
        """End request `key` with an error without the core (it refused the request, or it is broken)."""
        from core import Update

        self.remaining[key] = 1
        self._queue.put((key, Update("", "error", error)))

    def close(self) -> None:
        """Send what is queued, then STOPPED."""
        self._queue.put(_FLUSHED)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:  # take whatever else is already there
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = []
            closing = False
            for item in items:
                if item is _FLUSHED:
                    closing = True
                    continue
                key, update = item
                done = False
                if update.finish_reason is not None:
                    left = self.remaining.get(key, 1) - 1
                    done = left <= 0
                    if done:
                        self.remaining.pop(key, None)
                        self.cancelled.discard(key)
                    else:
                        self.remaining[key] = left
                batch.append(wire.pack(key, done, update))
            try:
                if batch:
                    wire.send(self._conn, batch)
                if closing:
                    wire.send(self._conn, (wire.STOPPED,))
            except OSError:  # the parent is gone; the main thread sees it too and stops
                return
            if closing:
                return


def serve(conn: Connection) -> int:
    config = wire.receive(conn)
    assert isinstance(config, dict)
    # The parent's import path (the model folder, its siblings, the environment's packages) before ours.
    sys.path[:] = [*config["sys_path"], *(p for p in sys.path if p not in config["sys_path"])]
    try:
        from core import InvalidRequest, load_core

        core = load_core(config["core"])(**config["options"])
    except Exception as exc:  # whatever stops the core from loading, the parent fails the model load with it
        log.exception("the %s engine core did not load", config["core"])
        wire.send(conn, (wire.FAILED, f"{type(exc).__name__}: {exc}"))
        return 1
    wire.send(conn, (wire.READY, {"max_model_len": core.max_model_len}))
    outbox = Outbox(conn)
    cancelled = outbox.cancelled
    while True:
        try:
            message = wire.receive(conn)
        except (EOFError, OSError):  # the parent is gone
            break
        assert isinstance(message, tuple)
        kind = message[0]
        if kind == wire.SUBMIT:
            _, key, request_id, prompt, sampling = message
            outbox.remaining[key] = sampling.n
            try:
                core.submit(request_id, prompt, sampling, outbox.sink(key), lambda key=key: key in cancelled)
            except (InvalidRequest, ValueError, TypeError) as exc:  # as model.py answers a refusal in process
                outbox.refuse(key, f"invalid request: {exc}")
            except Exception as exc:  # the core is broken: answer this request rather than leave it hanging
                outbox.refuse(key, f"llm engine failure: {exc}")
        elif kind == wire.CANCEL:
            cancelled.add(message[1])
        elif kind == wire.STOP:
            break
    core.shutdown()  # what is still in flight ends "error"
    outbox.close()
    return 0


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fd = int(sys.argv[1])
    os.set_inheritable(fd, False)  # a process this one starts must not hold the socket open (EOF = parent gone)
    return serve(Connection(fd))


if __name__ == "__main__":
    sys.exit(main())
