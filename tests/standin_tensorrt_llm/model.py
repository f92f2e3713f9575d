"""STAND-IN for the `tensorrt_llm` model, for tests only: TensorRT-LLM cannot run on these machines.

It speaks the tensorrt_llm model's tensor interface (its config is the rendered tensorrt_llm config with the
backend switched to python) and drives the real SmolLM2 checkpoint with transformers, one request at a time,
one token per streamed response, like the C++ in-flight batcher does; num_return_sequences are generated one after
the other, each response carrying its sequence_index (the last response of the last one is flagged final). Everything around it (preprocessing,
postprocessing, ensemble, tensorrt_llm_bls, the front-end) is the real thing under test.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import (
    AutoModelForCausalLM,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _value(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


def _word_list(request, name) -> list[list[int]]:
    """TensorRT-LLM's [1, 2, L] word list back into token sequences."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    ids, offsets = tensor.as_numpy().reshape(2, -1).tolist()
    words, start = [], 0
    for end in offsets:
        if end < 0:
            break
        words.append(ids[start:end])
        start = end
    return words


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.model = AutoModelForCausalLM.from_pretrained(params["checkpoint_dir"], dtype=torch.float32).eval()
        self.lock = threading.Lock()  # one generation at a time: this is a stand-in, not a batcher

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._generate, args=(request,), daemon=True).start()
        return None

    def _generate(self, request):
        sender = request.get_response_sender()
        try:
            with self.lock, torch.no_grad():
                self._run(request, sender)
        except Exception as exc:  # a test double: surface any failure as the request's error
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"stand-in failed: {exc}")), flags=FINAL)

    def _run(self, request, sender):
        count = _value(request, "num_return_sequences", 1)
        for index in range(count):
            if not self._sequence(request, sender, index, last=index == count - 1):
                return

    def _sequence(self, request, sender, index: int, last: bool) -> bool:
        """Generate sequence `index`; False when the request was cancelled."""
        prompt = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1).tolist()
        prompt = prompt[: _value(request, "input_lengths", len(prompt))]
        max_new = _value(request, "request_output_len")
        end_id = _value(request, "end_id")
        streaming = bool(_value(request, "streaming", False))
        min_tokens = _value(request, "min_tokens", 0)
        stops = _word_list(request, "stop_words_list")
        want = {
            "num_input_tokens": _value(request, "return_num_input_tokens", False),
            "num_output_tokens": _value(request, "return_num_output_tokens", False),
        }
        processors = self._processors(request)
        generator = torch.Generator().manual_seed(_value(request, "seed", 0) + index)
        bias = pb_utils.get_input_tensor_by_name(request, "embedding_bias")
        bias = None if bias is None or bias.as_numpy().size == 0 else torch.from_numpy(bias.as_numpy().reshape(-1))
        log_probs: list[float] = []
        want["log_probs"] = _value(request, "return_log_probs", False)
        temperature = _value(request, "temperature", 0.0)
        presence, frequency = _value(request, "presence_penalty", 0.0), _value(request, "frequency_penalty", 0.0)

        output: list[int] = []
        ids, cache = torch.tensor([prompt]), None
        while len(output) < max_new:
            if sender.is_cancelled():
                sender.send(flags=FINAL)
                return False
            result = self.model(ids, past_key_values=cache, use_cache=True)
            cache, logits = result.past_key_values, result.logits[:, -1, :]
            raw = torch.log_softmax(logits[0], -1)
            if bias is not None:
                logits = logits + bias
            history = torch.tensor([prompt + output])
            logits = processors(history, logits)
            if output and (presence or frequency):
                counts = torch.bincount(torch.tensor(output), minlength=logits.shape[-1]).float()
                logits = logits - presence * (counts > 0) - frequency * counts
            if end_id is not None and len(output) < min_tokens:
                logits[:, end_id] = -float("inf")
            if temperature and temperature > 0:
                token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            else:
                token = int(logits.argmax(-1))
            output.append(token)
            log_probs.append(float(raw[token]))
            done = token == end_id or len(output) >= max_new or any(output[-len(s) :] == s for s in stops if s)
            if streaming:
                response = self._response(
                    [token], log_probs[-1:], sum(log_probs), index, len(prompt), len(output), want
                )
                sender.send(response, flags=FINAL if done and last else 0)
            if done:
                break
            ids = torch.tensor([[token]])
        if not streaming:
            head = [] if _value(request, "exclude_input_in_output", False) else prompt
            response = self._response(head + output, log_probs, sum(log_probs), index, len(prompt), len(output), want)
            sender.send(response, flags=FINAL if last else 0)
        return True

    @staticmethod
    def _processors(request) -> LogitsProcessorList:
        processors = LogitsProcessorList()
        if (penalty := _value(request, "repetition_penalty")) not in (None, 1.0):
            processors.append(RepetitionPenaltyLogitsProcessor(penalty))
        if (temperature := _value(request, "temperature")) and temperature > 0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k := _value(request, "runtime_top_k"):
            processors.append(TopKLogitsWarper(top_k))
        if (top_p := _value(request, "runtime_top_p")) and 0 < top_p < 1:
            processors.append(TopPLogitsWarper(top_p))
        return processors

    @staticmethod
    def _response(tokens, log_probs, cum_log_prob, index, num_input, num_output, want):
        tensors = [
            pb_utils.Tensor("output_ids", np.array([[tokens]], dtype=np.int32)),
            pb_utils.Tensor("sequence_length", np.array([[len(tokens)]], dtype=np.int32)),
            pb_utils.Tensor("sequence_index", np.array([[index]], dtype=np.int32)),
        ]
        if want["log_probs"]:
            tensors.append(pb_utils.Tensor("output_log_probs", np.array([[log_probs]], dtype=np.float32)))
            tensors.append(pb_utils.Tensor("cum_log_probs", np.array([[cum_log_prob]], dtype=np.float32)))
        if want["num_input_tokens"]:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.array([[num_input]], dtype=np.int32)))
        if want["num_output_tokens"]:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.array([[num_output]], dtype=np.int32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)
