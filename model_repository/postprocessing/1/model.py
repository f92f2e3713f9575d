"""Ensemble step 3 (Triton python backend): token ids -> text, incrementally per request.

TensorRT-LLM streams only the new tokens of each step, and each response reaches this model as a separate
request. Decoding each on its own would split multi-byte characters (an emoji spans several byte-level tokens)
and lose the tokenizer's spacing context, so the decoder state of each stream is kept here, keyed by the request
id that the ensemble passes on (the front-end always sets one) and the sequence index (num_return_sequences > 1
interleaves sequences in one stream). A request without an id is decoded on its own. The token ids, their
log-probabilities (with return_log_probs) and the sequence index pass through in the contract's shapes.

Triton lets this step take inputs from the decoupled tensorrt_llm model only, so it knows neither the request's
stop words nor its max_tokens: the stream's state is dropped when the tokenizer's end-of-sequence token shows
(finish_reason "stop"), else after `stream_state_ttl_s` without a response (finish_reason "", which the
front-end resolves from the token counts). text_stream.py is the `llm` engine's module, copied in at rendering.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

# Triton's python backend puts this folder on sys.path (pb_stub's ModelContext::StubSetup).
from text_stream import TextStream


@dataclass
class _Stream:
    text: TextStream
    seen_at: float = field(default_factory=time.monotonic)


def _array(request, name) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def _optional(request, name, default: np.ndarray) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.tokenizer = AutoTokenizer.from_pretrained(params["tokenizer_dir"], local_files_only=True)
        self.skip_special_tokens = params.get("skip_special_tokens", "true").lower() == "true"
        self.ttl_s = float(params.get("stream_state_ttl_s", "600"))
        self.end_id = self.tokenizer.eos_token_id
        self.streams: OrderedDict[str, _Stream] = OrderedDict()  # least recently seen first

    def execute(self, requests):
        self._expire()
        return [self._one(request) for request in requests]

    def _one(self, request):
        # One beam: tokens [1, 1, T] and lengths [1, 1]; only the first `length` ids are real.
        length = int(_array(request, "SEQUENCE_LENGTH").reshape(-1)[0])
        tokens = [int(t) for t in _array(request, "TOKENS_BATCH").reshape(-1)[: max(length, 0)]]
        index = int(_optional(request, "SEQUENCE_INDEX", np.zeros(1)).reshape(-1)[0])
        log_probs = _optional(request, "OUTPUT_LOG_PROBS", np.zeros(0)).reshape(-1)[: len(tokens)]
        cum_log_probs = _optional(request, "CUM_LOG_PROBS", np.zeros(1)).reshape(-1)[:1]
        request_id = f"{request.request_id()}/{index}" if request.request_id() else ""
        stream = self.streams.pop(request_id, None) if request_id else None
        if stream is None:
            stream = _Stream(TextStream(self.tokenizer, skip_special_tokens=self.skip_special_tokens))
        stream.seen_at = time.monotonic()
        finish_reason = "stop" if tokens and tokens[-1] == self.end_id else ""
        text = stream.text.push(tokens)
        if finish_reason or not request_id:
            text += stream.text.finish()
        else:
            self.streams[request_id] = stream
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("OUTPUT", np.array([[text.encode("utf-8")]], dtype=np.object_)),
                pb_utils.Tensor("FINISH_REASON", np.array([[finish_reason.encode()]], dtype=np.object_)),
                pb_utils.Tensor("OUT_SEQUENCE_INDEX", np.array([[index]], dtype=np.int32)),
                pb_utils.Tensor("OUTPUT_IDS", np.array([tokens], dtype=np.int32)),
                pb_utils.Tensor("OUT_OUTPUT_LOG_PROBS", np.array([log_probs], dtype=np.float32)),
                pb_utils.Tensor("OUT_CUM_LOG_PROBS", np.array([cum_log_probs], dtype=np.float32)),
            ]
        )

    def _expire(self):
        deadline = time.monotonic() - self.ttl_s
        while self.streams and next(iter(self.streams.values())).seen_at < deadline:
            self.streams.popitem(last=False)
