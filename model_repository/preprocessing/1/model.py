"""Ensemble step 1 (Triton python backend): prompt text (or the contract's input_ids) -> token ids, for the
TensorRT-LLM model.

Stop and bad words become TensorRT-LLM's word-list tensor: shape [2, L] per request, row 0 the concatenated
token ids of all words, row 1 the end offset of each word, both padded (ids with 0, offsets with -1); each of the
contract's stop_token_ids is a one-token stop word. The contract's sparse logit bias (embedding_bias_token_ids,
embedding_bias_weights) becomes TensorRT-LLM's dense `embedding_bias` over the vocabulary ([1, 0] when unset).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


def _strings(request, name) -> list[str]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]


def _int(request, name) -> int | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else int(tensor.as_numpy().reshape(-1)[0])


def _ints(request, name) -> list[int]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return [] if tensor is None else [int(v) for v in tensor.as_numpy().reshape(-1)]


def _floats(request, name) -> list[float]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return [] if tensor is None else [float(v) for v in tensor.as_numpy().reshape(-1)]


def word_list(tokenizer, words: list[str], token_words: Sequence[int] = ()) -> np.ndarray:
    """TensorRT-LLM's [1, 2, L] word list for one request (an empty list is [[0], [-1]]); `token_words` are
    token ids that are each a word of one token."""
    ids: list[int] = []
    offsets: list[int] = []
    for word in words:
        if not word:
            continue
        ids += tokenizer.encode(word, add_special_tokens=False)
        offsets.append(len(ids))
    for token in token_words:
        ids.append(token)
        offsets.append(len(ids))
    if not ids:
        ids, offsets = [0], [-1]
    width = max(len(ids), len(offsets))
    table = np.array([ids + [0] * (width - len(ids)), offsets + [-1] * (width - len(offsets))], dtype=np.int32)
    return table[np.newaxis]


def _vocab_size(checkpoint_dir: str, fallback: int) -> int:
    """The model's vocabulary (its logits' width), which may exceed the tokenizer's."""
    config = Path(checkpoint_dir) / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("vocab_size") or fallback)
    return fallback


def _invalid(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"invalid request: {message}"))


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.tokenizer = AutoTokenizer.from_pretrained(params["tokenizer_dir"], local_files_only=True)
        self.add_special_tokens = params.get("add_special_tokens", "false").lower() == "true"
        self.max_input_len = int(params["max_input_len"])
        self.vocab_size = _vocab_size(params["tokenizer_dir"], len(self.tokenizer))
        self.end_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        query, given_ids = _strings(request, "QUERY"), _ints(request, "INPUT_IDS")
        if len(query) + bool(given_ids) != 1 or len(query) > 1:
            return _invalid("text_input must be one string (or send input_ids instead)")
        max_tokens = _int(request, "REQUEST_OUTPUT_LEN")
        if max_tokens is None or max_tokens < 1:
            return _invalid("max_tokens must be at least 1")
        ids = given_ids or self.tokenizer.encode(query[0], add_special_tokens=self.add_special_tokens)
        if any(not 0 <= token < self.vocab_size for token in ids):
            return _invalid(f"input_ids must be token ids in [0, {self.vocab_size})")
        if len(ids) > self.max_input_len:
            name = "input_ids" if given_ids else "text_input"
            return _invalid(
                f"{name} has {len(ids)} tokens; the TensorRT-LLM engines were built for at most "
                f"{self.max_input_len} (max_input_len)"
            )
        stop_ids = _ints(request, "STOP_TOKEN_IDS")
        if any(not 0 <= token < self.vocab_size for token in stop_ids):
            return _invalid(f"stop_token_ids must be token ids in [0, {self.vocab_size})")
        bias = self._embedding_bias(
            _ints(request, "EMBEDDING_BIAS_TOKEN_IDS"), _floats(request, "EMBEDDING_BIAS_WEIGHTS")
        )
        if isinstance(bias, str):
            return _invalid(bias)
        end_id = _int(request, "END_ID")
        pad_id = _int(request, "PAD_ID")
        stop_words = word_list(self.tokenizer, _strings(request, "STOP_WORDS_DICT"), stop_ids)
        tensors = [
            pb_utils.Tensor("INPUT_ID", np.array([ids], dtype=np.int32)),
            pb_utils.Tensor("REQUEST_INPUT_LEN", np.array([[len(ids)]], dtype=np.int32)),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", np.array([[max_tokens]], dtype=np.int32)),
            pb_utils.Tensor("STOP_WORDS_IDS", stop_words),
            pb_utils.Tensor("BAD_WORDS_IDS", word_list(self.tokenizer, _strings(request, "BAD_WORDS_DICT"))),
            pb_utils.Tensor("OUT_END_ID", np.array([[self.end_id if end_id is None else end_id]], dtype=np.int32)),
            pb_utils.Tensor("OUT_PAD_ID", np.array([[self.pad_id if pad_id is None else pad_id]], dtype=np.int32)),
            pb_utils.Tensor("EMBEDDING_BIAS", bias),
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _embedding_bias(self, token_ids: list[int], weights: list[float]) -> np.ndarray | str:
        """TensorRT-LLM's dense [1, vocab] bias (or [1, 0] for none), or what is wrong with the request."""
        if len(token_ids) != len(weights):
            return "embedding_bias_token_ids and embedding_bias_weights must have the same length"
        if not token_ids:
            return np.zeros((1, 0), dtype=np.float32)
        if any(not 0 <= token < self.vocab_size for token in token_ids):
            return f"embedding_bias_token_ids must be token ids in [0, {self.vocab_size})"
        if any(not -100 <= weight <= 100 for weight in weights):
            return "embedding_bias_weights must be in [-100, 100]"
        bias = np.zeros((1, self.vocab_size), dtype=np.float32)
        for token, weight in zip(token_ids, weights, strict=True):
            bias[0, token] = weight
        return bias
