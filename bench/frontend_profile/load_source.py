"""LOAD SOURCE, not an engine. A Triton python model with the `llm` model's configuration (the engine contract)
that answers every request with `max_tokens` tokens of fixed text at a fixed rate, so that the front-end can be
measured on its own (issue 7, part 4): whatever rate the front-end cannot pass on is the front-end's cost.

Each response carries LOAD_SOURCE_TOKENS_PER_CHUNK tokens ("tok "), one response per request every
LOAD_SOURCE_INTERVAL_MS, from one thread (no thread per request). bench/frontend_profile/run.sh puts this file in
place of a rendered `llm` model's model.py.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _int(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else int(tensor.as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args):
        self.interval = float(os.environ.get("LOAD_SOURCE_INTERVAL_MS", "10")) / 1000
        self.per_chunk = int(os.environ.get("LOAD_SOURCE_TOKENS_PER_CHUNK", "1"))
        self.active: list[list] = []  # [sender, max_tokens, produced]
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def execute(self, requests):
        with self.lock:
            for request in requests:
                self.active.append([request.get_response_sender(), max(1, _int(request, "max_tokens", 16)), 0])
        return None

    def _response(self, count: int, produced: int, final: bool) -> pb_utils.InferenceResponse:
        tensors = [
            pb_utils.Tensor("text_output", np.array([[("tok " * count).encode()]], dtype=np.object_)),
            pb_utils.Tensor("num_input_tokens", np.array([[1]], dtype=np.int32)),
            pb_utils.Tensor("num_output_tokens", np.array([[produced]], dtype=np.int32)),
        ]
        if final:
            tensors.append(pb_utils.Tensor("finish_reason", np.array([[b"length"]], dtype=np.object_)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _loop(self):
        deadline, ticks = time.monotonic(), 0
        while not self.stopping.is_set():
            deadline += self.interval
            time.sleep(max(0.0, deadline - time.monotonic()))
            ticks += 1
            with self.lock:
                batch = list(self.active)
            finished = []
            for entry in batch:
                sender, max_tokens, produced = entry
                if ticks % 20 == 0 and sender.is_cancelled():  # a cancel check is an IPC round trip: not every tick
                    sender.send(flags=FINAL)
                    finished.append(entry)
                    continue
                count = min(self.per_chunk, max_tokens - produced)
                entry[2] = produced = produced + count
                final = produced >= max_tokens
                sender.send(self._response(count, produced, final), flags=FINAL if final else 0)
                if final:
                    finished.append(entry)
            if finished:
                done = {id(entry) for entry in finished}
                with self.lock:
                    self.active = [entry for entry in self.active if id(entry) not in done]

    def finalize(self):
        self.stopping.set()
        self.thread.join(timeout=5)
