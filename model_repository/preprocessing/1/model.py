"""Ensemble step 1 (Triton python backend): prompt text -> token ids, for the TensorRT-LLM model.

Stop and bad words become TensorRT-LLM's word-list tensor: shape [2, L] per request, row 0 the concatenated
token ids of all words, row 1 the end offset of each word, both padded (ids with 0, offsets with -1).
"""

from __future__ import annotations

import json

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


def word_list(tokenizer, words: list[str]) -> np.ndarray:
    """TensorRT-LLM's [1, 2, L] word list for one request (an empty list is [[0], [-1]])."""
    ids: list[int] = []
    offsets: list[int] = []
    for word in words:
        if not word:
            continue
        ids += tokenizer.encode(word, add_special_tokens=False)
        offsets.append(len(ids))
    if not ids:
        ids, offsets = [0], [-1]
    width = max(len(ids), len(offsets))
    table = np.array([ids + [0] * (width - len(ids)), offsets + [-1] * (width - len(offsets))], dtype=np.int32)
    return table[np.newaxis]


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.tokenizer = AutoTokenizer.from_pretrained(params["tokenizer_dir"], local_files_only=True)
        self.add_special_tokens = params.get("add_special_tokens", "false").lower() == "true"
        self.max_input_len = int(params["max_input_len"])
        self.end_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        query = _strings(request, "QUERY")
        if len(query) != 1:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError("invalid request: text_input must be one string")
            )
        max_tokens = _int(request, "REQUEST_OUTPUT_LEN")
        if max_tokens is None or max_tokens < 1:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError("invalid request: max_tokens must be at least 1")
            )
        ids = self.tokenizer.encode(query[0], add_special_tokens=self.add_special_tokens)
        if len(ids) > self.max_input_len:
            message = (
                f"invalid request: text_input has {len(ids)} tokens; the TensorRT-LLM engines were built for "
                f"at most {self.max_input_len} (max_input_len)"
            )
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
        end_id = _int(request, "END_ID")
        pad_id = _int(request, "PAD_ID")
        tensors = [
            pb_utils.Tensor("INPUT_ID", np.array([ids], dtype=np.int32)),
            pb_utils.Tensor("REQUEST_INPUT_LEN", np.array([[len(ids)]], dtype=np.int32)),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", np.array([[max_tokens]], dtype=np.int32)),
            pb_utils.Tensor("STOP_WORDS_IDS", word_list(self.tokenizer, _strings(request, "STOP_WORDS_DICT"))),
            pb_utils.Tensor("BAD_WORDS_IDS", word_list(self.tokenizer, _strings(request, "BAD_WORDS_DICT"))),
            pb_utils.Tensor("OUT_END_ID", np.array([[self.end_id if end_id is None else end_id]], dtype=np.int32)),
            pb_utils.Tensor("OUT_PAD_ID", np.array([[self.pad_id if pad_id is None else pad_id]], dtype=np.int32)),
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)
