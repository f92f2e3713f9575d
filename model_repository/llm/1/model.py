"""Triton python backend (decoupled) serving the engine contract (engine_contract) with one engine core.

This file is Triton glue only: the `engine_core` config parameter picks a core from core.CORES; contract_io.py
translates the contract's tensors to and from the core's types; response_queue.py sends the responses.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid

import triton_python_backend_utils as pb_utils

# Triton's python backend puts this folder on sys.path (pb_stub's ModelContext::StubSetup): siblings import as
# top-level modules.
from contract_io import parse_request, response_arrays
from core import DEFAULT_CORE, InvalidRequest, Sampling, Update, load_core
from engine_process import EngineProcess, EngineProcessError
from response_queue import ResponseQueue

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _input_array(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _response(update: Update, text: str, sampling: Sampling, cum_logprob: float) -> pb_utils.InferenceResponse:
    arrays = response_arrays(update, text, sampling, cum_logprob)
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array) for name, array in arrays.items()])


class _ResponseWriter:
    """Turns engine updates into Triton responses for one request: per sequence (Update.index, of sampling.n),
    streamed deltas or one response at its end; the FINAL flag once every sequence has ended (an error ends the
    request at once)."""

    def __init__(self, sender, stream: bool, prefix: str, sampling: Sampling, on_finish):
        self._sender = sender
        self._stream = stream
        self._prefix = prefix  # the prompt when exclude_input_in_output is false (non-streaming text prompts only)
        self._sampling = sampling
        self._on_finish = on_finish
        self._pending: dict[int, Update] = {}  # per sequence: what is not sent yet
        self._started: set[int] = set()
        self._cum: dict[int, float] = {}  # per sequence: the sum of the log-probabilities sent
        self._ended = 0
        self._closed = False

    def __call__(self, update: Update) -> None:
        if self._closed:
            return
        index = update.index
        if index not in self._started:
            self._started.add(index)
            update = Update(self._prefix).then(update)
        previous = self._pending.pop(index, None)
        if previous is not None:
            update = previous.then(update)
        if update.finish_reason is None:
            if self._stream and (update.text or update.token_ids):
                self._send(update, 0)
            else:
                self._pending[index] = update
            return
        self._ended += 1
        final = self._ended >= self._sampling.n
        if update.finish_reason == "error":
            self._closed = True
            self._on_finish(update)
            error = pb_utils.TritonError(update.error or "generation failed")
            self._sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        if final:
            self._closed = True
            self._on_finish(update)
        if update.finish_reason == "cancelled":
            if final:
                self._sender.send(flags=FINAL)
        else:
            self._send(update, FINAL if final else 0)

    def _send(self, update: Update, flags: int) -> None:
        cum = self._cum[update.index] = self._cum.get(update.index, 0.0) + sum(update.logprobs)
        self._sender.send(_response(update, update.text, self._sampling, cum), flags=flags)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("the llm model must use the decoupled transaction policy")
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        device = params.get("device", "cpu")
        if device == "cuda":
            device = f"cuda:{args.get('model_instance_device_id', 0)}"
        self.core_name = params.get("engine_core", DEFAULT_CORE)
        in_child = params.get("engine_process", "false")
        if in_child not in ("true", "false"):
            raise pb_utils.TritonModelException(f"engine_process must be true or false, not {in_child!r}")
        self._in_child = in_child == "true"
        try:  # engine_process: the core runs in a child process (engine_process.py), not imported here
            core_class = (
                functools.partial(EngineProcess, self.core_name) if self._in_child else load_core(self.core_name)
            )
            self.engine = core_class(
                checkpoint_dir=params["checkpoint_dir"],
                device=device,
                dtype=params.get("dtype", "float32"),
                max_num_seqs=int(params.get("max_num_seqs", 32)),
                kv_cache_blocks=int(params.get("kv_cache_blocks", 0)),
                prefix_caching=params.get("prefix_caching", "false") == "true",
                max_model_len=int(params["max_model_len"]) if params.get("max_model_len") else None,
            )
        except (ValueError, EngineProcessError) as exc:  # an unknown engine_core, an option it refuses: no load
            raise pb_utils.TritonModelException(str(exc)) from exc
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
            f"warmup-{uuid.uuid4().hex}",
            "Hello",
            Sampling(max_tokens=2, temperature=0.0),
            sink=lambda u: u.finish_reason and done.set(),
            is_cancelled=lambda: False,
        )
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
                parsed = parse_request(functools.partial(_input_array, request), self.core_name)
                keep_prompt = isinstance(parsed.prompt, str) and not (parsed.exclude_input_in_output or parsed.stream)
                prefix = parsed.prompt if keep_prompt else ""  # an ids prompt: nothing (the output is text)
                writer = _ResponseWriter(sender, parsed.stream, prefix, parsed.sampling, self._count_finished)
                request_id = f"{request.request_id() or 'req'}-{uuid.uuid4().hex}"
                # In a child, the core's updates arrive in batches on a thread that sends the responses itself.
                sink = writer if self._in_child else self.responses.sink_for(writer)
                self.engine.submit(request_id, parsed.prompt, parsed.sampling, sink, sender.is_cancelled)
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
