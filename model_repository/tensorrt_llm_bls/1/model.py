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
}
PREPROCESSING_INPUTS = {
    "text_input": "QUERY",
    "max_tokens": "REQUEST_OUTPUT_LEN",
    "stop_words": "STOP_WORDS_DICT",
    "bad_words": "BAD_WORDS_DICT",
    "end_id": "END_ID",
}
PREPROCESSING_OUTPUTS = {
    "INPUT_ID": "input_ids",
    "REQUEST_INPUT_LEN": "input_lengths",
    "REQUEST_OUTPUT_LEN": "request_output_len",
    "STOP_WORDS_IDS": "stop_words_list",
    "BAD_WORDS_IDS": "bad_words_list",
    "OUT_END_ID": "end_id",
    "OUT_PAD_ID": "pad_id",
}


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


def _contract_response(text: str, num_input: int, num_output: int, finish_reason: str) -> pb_utils.InferenceResponse:
    values = {
        contract.TEXT_OUTPUT: [text],
        contract.NUM_INPUT_TOKENS: num_input,
        contract.NUM_OUTPUT_TOKENS: num_output,
        contract.FINISH_REASON: finish_reason,
    }
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(s.name, s.array(v)) for s, v in values.items()])


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
        text = TextStream(self.tokenizer, _strings(request, "stop_words"))
        prefix = "" if stream or _flag(request, "exclude_input_in_output") else _strings(request, "text_input")[0]
        pending, num_output, finish_reason = prefix, 0, ""
        responses = pb_utils.InferenceRequest(
            model_name="tensorrt_llm", inputs=inputs, requested_output_names=["output_ids", "sequence_length"]
        ).exec(decoupled=True)
        for response in responses:
            if sender.is_cancelled():
                sender.send(flags=FINAL)
                return
            if response.has_error():
                raise BlsError(response.error().message())
            ids = _output(response, "output_ids")
            if ids is None:  # the engine's flags-only final response
                continue
            length = int(_output(response, "sequence_length").reshape(-1)[0])
            tokens = [int(t) for t in ids.reshape(-1)[:length]]
            num_output += len(tokens)
            pending += text.push(tokens)
            if text.stopped or (tokens and tokens[-1] == end_id):
                finish_reason = "stop"
            elif num_output >= max_tokens:
                finish_reason = "length"
            if finish_reason:
                break
            if stream and pending:
                sender.send(_contract_response(pending, num_input, num_output, ""))
                pending = ""
        pending += text.finish()
        sender.send(_contract_response(pending, num_input, num_output, finish_reason or "stop"), flags=FINAL)
        for _ in responses:  # a stop string ended the text early: let the engine's stream run out unseen
            pass
