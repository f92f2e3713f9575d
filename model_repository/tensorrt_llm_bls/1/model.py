"""TensorRT-LLM through BLS (Triton python backend, decoupled): the engine contract in one model.

For each request: `preprocessing` (tokenize, word lists), then a decoupled `tensorrt_llm` stream, detokenized
here incrementally (text_stream.py, the `llm` engine's module, copied in when the repository is rendered), so a
multi-byte character is never split, stop strings are trimmed and the finish reason is exact.
A client cancellation stops the responses at once; the bundled Triton 2.51 python backend cannot cancel a BLS
stream, so the engine finishes that request on its own (bounded by max_tokens).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

import engine_contract as contract

# Triton's python backend puts this folder on sys.path (pb_stub's ModelContext::StubSetup).
from text_stream import TextStream

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Contract input -> tensorrt_llm input, passed through unchanged when the request has it.
PASSTHROUGH = {
    "temperature": "temperature",
    "top_k": "runtime_top_k",
    "top_p": "runtime_top_p",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "min_tokens": "min_tokens",
    "seed": "seed",
    "num_return_sequences": "num_return_sequences",
    "return_log_probs": "return_log_probs",
    "guided_decoding_guide_type": "guided_decoding_guide_type",
    "guided_decoding_guide": "guided_decoding_guide",
}
PREPROCESSING_INPUTS = {
    "text_input": "QUERY",
    "input_ids": "INPUT_IDS",
    "max_tokens": "REQUEST_OUTPUT_LEN",
    "stop_words": "STOP_WORDS_DICT",
    "stop_token_ids": "STOP_TOKEN_IDS",
    "bad_words": "BAD_WORDS_DICT",
    "end_id": "END_ID",
    "pad_id": "PAD_ID",
    "embedding_bias_token_ids": "EMBEDDING_BIAS_TOKEN_IDS",
    "embedding_bias_weights": "EMBEDDING_BIAS_WEIGHTS",
}
PREPROCESSING_OUTPUTS = {
    "INPUT_ID": "input_ids",
    "REQUEST_INPUT_LEN": "input_lengths",
    "REQUEST_OUTPUT_LEN": "request_output_len",
    "STOP_WORDS_IDS": "stop_words_list",
    "BAD_WORDS_IDS": "bad_words_list",
    "OUT_END_ID": "end_id",
    "OUT_PAD_ID": "pad_id",
    "EMBEDDING_BIAS": "embedding_bias",
}
ENGINE_OUTPUTS = ["output_ids", "sequence_length", "sequence_index", "output_log_probs", "cum_log_probs"]


class BlsError(Exception):
    pass


def _flag(request, name) -> bool:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor is not None and bool(tensor.as_numpy().reshape(-1)[0])


def _strings(request, name) -> tuple[str, ...]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return ()
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1))


def _output(response, name) -> np.ndarray | None:
    tensor = pb_utils.get_output_tensor_by_name(response, name)
    return None if tensor is None else tensor.as_numpy()


@dataclass
class _Sequence:
    """One of the request's num_return_sequences, detokenized on its own."""

    text: TextStream
    pending: str = ""
    token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    cum_log_prob: float = 0.0
    num_output: int = 0
    finish_reason: str = ""

    def response(self, index: int, num_input: int) -> pb_utils.InferenceResponse:
        """The contract's response of what this sequence has pending (then cleared)."""
        values = {
            contract.TEXT_OUTPUT: [self.pending],
            contract.NUM_INPUT_TOKENS: num_input,
            contract.NUM_OUTPUT_TOKENS: self.num_output,
            contract.FINISH_REASON: self.finish_reason,
            contract.SEQUENCE_INDEX: index,
            contract.OUTPUT_IDS: self.token_ids,
            contract.OUTPUT_LOG_PROBS: self.log_probs,
            contract.CUM_LOG_PROBS: self.cum_log_prob,
        }
        self.pending, self.token_ids, self.log_probs = "", [], []
        tensors = [pb_utils.Tensor(spec.name, spec.array(value)) for spec, value in values.items()]
        return pb_utils.InferenceResponse(output_tensors=tensors)


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.tokenizer = AutoTokenizer.from_pretrained(params["tokenizer_dir"], local_files_only=True)

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._serve, args=(request,), daemon=True).start()
        return None

    def _serve(self, request):
        sender = request.get_response_sender()
        try:
            self._generate(request, sender)
        except BlsError as exc:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)

    def _preprocess(self, request) -> list[pb_utils.Tensor]:
        inputs = [
            pb_utils.Tensor(target, tensor.as_numpy())
            for source, target in PREPROCESSING_INPUTS.items()
            if (tensor := pb_utils.get_input_tensor_by_name(request, source)) is not None
        ]
        response = pb_utils.InferenceRequest(
            model_name="preprocessing", inputs=inputs, requested_output_names=list(PREPROCESSING_OUTPUTS)
        ).exec()
        if response.has_error():
            raise BlsError(response.error().message())
        return [pb_utils.Tensor(target, _output(response, source)) for source, target in PREPROCESSING_OUTPUTS.items()]

    def _generate(self, request, sender):
        stream = _flag(request, "stream")
        inputs = self._preprocess(request)
        end_id = int(next(t for t in inputs if t.name() == "end_id").as_numpy().reshape(-1)[0])
        max_tokens = int(next(t for t in inputs if t.name() == "request_output_len").as_numpy().reshape(-1)[0])
        num_input = int(next(t for t in inputs if t.name() == "input_lengths").as_numpy().reshape(-1)[0])
        for source, target in PASSTHROUGH.items():
            if (tensor := pb_utils.get_input_tensor_by_name(request, source)) is not None:
                inputs.append(pb_utils.Tensor(target, tensor.as_numpy()))
        # Always stream from the engine: detokenizing here is what keeps characters whole and stops exact.
        inputs.append(pb_utils.Tensor("streaming", np.array([[True]], dtype=np.bool_)))
        inputs.append(pb_utils.Tensor("exclude_input_in_output", np.array([[True]], dtype=np.bool_)))
        stops = _strings(request, "stop_words")
        count = pb_utils.get_input_tensor_by_name(request, "num_return_sequences")
        sequences = [
            _Sequence(TextStream(self.tokenizer, stops)) for _ in range(1 if count is None else int(count.as_numpy()))
        ]
        texts = _strings(request, "text_input")
        if not (stream or _flag(request, "exclude_input_in_output")) and texts:
            for sequence in sequences:
                sequence.pending = texts[0]
        responses = pb_utils.InferenceRequest(
            model_name="tensorrt_llm", inputs=inputs, requested_output_names=ENGINE_OUTPUTS
        ).exec(decoupled=True)
        last = None  # the sequence whose end ends the request
        for response in responses:
            if sender.is_cancelled():
                sender.send(flags=FINAL)
                return
            if response.has_error():
                raise BlsError(response.error().message())
            ids = _output(response, "output_ids")
            if ids is None:  # the engine's flags-only final response
                continue
            index_array = _output(response, "sequence_index")
            index = 0 if index_array is None else int(index_array.reshape(-1)[0])
            sequence = sequences[index]
            if sequence.finish_reason:  # a stop string ended it: the engine's rest of it is not shown
                continue
            length = int(_output(response, "sequence_length").reshape(-1)[0])
            tokens = [int(t) for t in ids.reshape(-1)[:length]]
            log_probs = _output(response, "output_log_probs")
            if log_probs is not None:
                sequence.log_probs += [float(v) for v in log_probs.reshape(-1)[: len(tokens)]]
                sequence.cum_log_prob = float(_output(response, "cum_log_probs").reshape(-1)[0])
            sequence.token_ids += tokens
            sequence.num_output += len(tokens)
            sequence.pending += sequence.text.push(tokens)
            if sequence.text.stopped or (tokens and tokens[-1] == end_id):
                sequence.finish_reason = "stop"
            elif sequence.num_output >= max_tokens:
                sequence.finish_reason = "length"
            if sequence.finish_reason:
                sequence.pending += sequence.text.finish()
            if sequence.finish_reason or (stream and sequence.pending):
                if all(s.finish_reason for s in sequences):
                    last = index  # sent below, flagged final
                    break
                sender.send(sequence.response(index, num_input))
        # A sequence whose engine stream ran out without a finish we saw (the engine stopped it) ends "stop".
        unfinished = [i for i, s in enumerate(sequences) if not s.finish_reason]
        for i in unfinished:
            sequences[i].finish_reason = "stop"
            sequences[i].pending += sequences[i].text.finish()
        ends = [last] if last is not None else unfinished or [0]
        for i in ends[:-1]:
            sender.send(sequences[i].response(i, num_input))
        sender.send(sequences[ends[-1]].response(ends[-1], num_input), flags=FINAL)
        for _ in responses:  # a stop string ended the text early: let the engine's stream run out unseen
            pass
