"""Triton python backend (decoupled) serving the engine contract of the TensorRT-LLM ensemble.

This file only translates: Triton tensors in -> engine.Sampling, engine.Update -> Triton responses.
The batching engine is engine.py; text handling is text_stream.py.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(__file__))  # siblings (engine, text_stream) import as top-level modules

from engine import Engine, InvalidRequest, Sampling, Update  # noqa: E402
from fast_core import FastEngine  # noqa: E402
from response_queue import ResponseQueue  # noqa: E402

ENGINE_CORES = {"transformers": Engine, "fast": FastEngine}

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

# Inputs of the contract this engine cannot honour when they ask for anything but the neutral value.
NEUTRAL_INPUTS = {
    "repetition_penalty": (1.0, "repetition_penalty is not supported by the llm engine"),
    "presence_penalty": (0.0, "presence_penalty is not supported by the llm engine"),
    "frequency_penalty": (0.0, "frequency_penalty is not supported by the llm engine"),
}


def _scalar(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)
    if value.size == 0:
        return default
    value = value[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def _strings(request, name) -> tuple[str, ...]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return ()
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1))


def _parse(request) -> tuple[str, Sampling, bool, bool]:
    """Return (prompt, sampling, stream, exclude_input_in_output); raise InvalidRequest on what we cannot honour."""
    prompt = _scalar(request, "text_input")
    if prompt is None:
        raise InvalidRequest("text_input is required")
    max_tokens = _scalar(request, "max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens is required")
    for name, (neutral, message) in NEUTRAL_INPUTS.items():
        value = _scalar(request, name)
        if value is not None and value != neutral:
            raise InvalidRequest(message)
    if _scalar(request, "seed") is not None:
        raise InvalidRequest(
            "seed is not supported by the llm engine (its batching loop has one random generator for all requests)"
        )
    if any(_strings(request, "bad_words")):
        raise InvalidRequest("bad_words is not supported by the llm engine")
    sampling = Sampling(
        max_tokens=int(max_tokens),
        temperature=float(_scalar(request, "temperature", 1.0)),
        top_p=float(_scalar(request, "top_p", 1.0)),
        top_k=int(_scalar(request, "top_k", 0)),
        min_tokens=int(_scalar(request, "min_tokens", 0)),
        end_id=_scalar(request, "end_id"),
        stop=tuple(s for s in _strings(request, "stop_words") if s),
    )
    stream = bool(_scalar(request, "stream", False))
    exclude_input = bool(_scalar(request, "exclude_input_in_output", False))
    return prompt, sampling, stream, exclude_input


def _response(update: Update, text: str) -> pb_utils.InferenceResponse:
    tensors = [
        pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=np.object_)),
        pb_utils.Tensor("num_input_tokens", np.array([[update.num_input_tokens]], dtype=np.int32)),
        pb_utils.Tensor("num_output_tokens", np.array([[update.num_output_tokens]], dtype=np.int32)),
    ]
    if update.finish_reason:
        tensors.append(pb_utils.Tensor("finish_reason", np.array([[update.finish_reason.encode()]], np.object_)))
    return pb_utils.InferenceResponse(output_tensors=tensors)


class _ResponseWriter:
    """Turns engine updates into Triton responses for one request (streamed deltas, or one response at the end)."""

    def __init__(self, sender, stream: bool, prefix: str, on_finish):
        self._sender = sender
        self._stream = stream
        self._pending = prefix  # the prompt when exclude_input_in_output is false (non-streaming only)
        self._on_finish = on_finish

    def __call__(self, update: Update) -> None:
        self._pending += update.text
        if update.finish_reason is None:
            if self._stream and self._pending:
                self._sender.send(_response(update, self._pending))
                self._pending = ""
            return
        self._on_finish(update)
        if update.finish_reason == "error":
            error = pb_utils.TritonError(update.error or "generation failed")
            self._sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
        elif update.finish_reason == "cancelled":
            self._sender.send(flags=FINAL)
        else:
            self._sender.send(_response(update, self._pending), flags=FINAL)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("the llm model must use the decoupled transaction policy")
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        device = params.get("device", "cpu")
        if device == "cuda":
            device = f"cuda:{args.get('model_instance_device_id', 0)}"
        core = params.get("engine_core", "transformers")
        if core not in ENGINE_CORES:
            raise pb_utils.TritonModelException(f"engine_core must be one of {sorted(ENGINE_CORES)}, not {core!r}")
        self.engine = ENGINE_CORES[core](
            checkpoint_dir=params["checkpoint_dir"],
            device=device,
            dtype=params.get("dtype", "float32"),
            max_num_seqs=int(params.get("max_num_seqs", 32)),
            kv_cache_blocks=int(params.get("kv_cache_blocks", 0)),
            max_model_len=int(params["max_model_len"]) if params.get("max_model_len") else None,
        )
        self.responses = ResponseQueue()
        self._labels = labels = {"model": args["model_name"], "instance": args["model_instance_name"]}
        # Metric families must outlive their metrics: keep references to both.
        self._active_family = pb_utils.MetricFamily(
            name="llm_engine_active_requests",
            description="Requests in flight in the llm engine (queued or generating)",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self._active_metric = self._active_family.Metric(labels=labels)
        self._finished_metric = pb_utils.MetricFamily(
            name="llm_engine_requests_finished_total",
            description="Requests the llm engine finished, by finish reason",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self._finished_by_reason = {}
        self._metrics_lock = threading.Lock()
        self._warm_up()

    def _warm_up(self):
        """Run one short generation so the first user request does not pay for lazy initialisation."""
        done = threading.Event()
        self.engine.submit(
            f"warmup-{uuid.uuid4().hex}", "Hello", Sampling(max_tokens=2, temperature=0.0),
            sink=lambda u: u.finish_reason and done.set(), is_cancelled=lambda: False,
        )  # fmt: skip
        if not done.wait(timeout=300):
            raise pb_utils.TritonModelException("warm-up generation did not finish within 300 s")

    def _count_finished(self, update: Update) -> None:
        with self._metrics_lock:
            metric = self._finished_by_reason.get(update.finish_reason)
            if metric is None:
                metric = self._finished_metric.Metric(labels={**self._labels, "reason": update.finish_reason})
                self._finished_by_reason[update.finish_reason] = metric
            metric.increment(1)
            self._active_metric.set(self.engine.num_active)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt, sampling, stream, exclude_input = _parse(request)
                prefix = "" if exclude_input or stream else prompt
                writer = _ResponseWriter(sender, stream, prefix, self._count_finished)
                request_id = f"{request.request_id() or 'req'}-{uuid.uuid4().hex}"
                self.engine.submit(request_id, prompt, sampling, self.responses.sink_for(writer), sender.is_cancelled)
            except (InvalidRequest, ValueError, TypeError) as exc:
                error = pb_utils.TritonError(f"invalid request: {exc}")
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            except Exception as exc:  # the engine is broken: answer this request rather than leave it hanging
                error = pb_utils.TritonError(f"llm engine failure: {exc}")
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            self._active_metric.set(self.engine.num_active)
        return None

    def finalize(self):
        self.engine.shutdown()
        self.responses.close()
