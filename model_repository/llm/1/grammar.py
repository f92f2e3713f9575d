"""Grammar-constrained decoding (engine_contract's guided_decoding_guide_type / guided_decoding_guide) over xgrammar,
as TensorRT-LLM and vLLM do it: the guide compiles once per (type, guide) into a CompiledGrammar (the compiler
caches it), each sequence gets its own GrammarMatcher, and each step the matcher's bitmask of the tokens the
grammar allows next masks the logits (disallowed -> -inf) before sampling; the sampled token is then accepted.

xgrammar imports torch and transformers: a core imports this module only when a request has a guide, so a core
that never sees one stays small (the openvino_paged core's process).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import xgrammar as xgr

from core import InvalidRequest

# xgrammar's C++ errors start with "[hh:mm:ss] /project/cpp/file.cc:123: " and may say "Check failed: (...) is false:"
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")
COMPILE_THREADS = 2  # the compiler's threads (a CPU core serves model steps too)
ANY_OBJECT = '{"type": "object"}'
CACHE_BYTES = 256 << 20  # compiled grammars kept (LRU) across requests


class Guides:
    """Compiles guides for one model: its tokenizer's vocabulary, as wide as the model's logits (`vocab_size` may
    exceed the tokenizer's: the ids beyond are never allowed). Thread-safe (submit compiles, the loop matches)."""

    def __init__(self, checkpoint: Path, vocab_size: int):
        self.checkpoint, self.vocab_size = checkpoint, vocab_size
        self._compiler: xgr.GrammarCompiler | None = None
        self._lock = threading.Lock()

    def _get_compiler(self) -> xgr.GrammarCompiler:
        with self._lock:  # built on the first guided request (the HF tokenizer takes a few seconds to load)
            if self._compiler is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self.checkpoint, local_files_only=True)
                info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size)
                self._compiler = xgr.GrammarCompiler(
                    info, max_threads=COMPILE_THREADS, cache_enabled=True, cache_limit_bytes=CACHE_BYTES
                )
            return self._compiler

    def compile(self, guide_type: str, guide: str) -> xgr.CompiledGrammar:
        """The compiled guide (core.validate_guide checked its type), or InvalidRequest naming the guide."""
        compiler = self._get_compiler()
        try:
            if guide_type == "json":  # any JSON object (OpenAI's json_object; vLLM compiles it so too)
                return compiler.compile_json_schema(ANY_OBJECT)
            if guide_type == "json_schema":
                return compiler.compile_json_schema(guide)
            if guide_type == "regex":
                return compiler.compile_regex(guide)
            if guide_type == "ebnf_grammar":
                return compiler.compile_grammar(guide)
            if guide_type == "structural_tag":
                return compiler.compile_structural_tag(guide)
        except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's invalid JSON / schema / syntax errors
            detail = _LOCATION.sub("", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            raise InvalidRequest(f"guided_decoding_guide: not a valid {guide_type} guide: {detail}") from exc
        raise InvalidRequest(f"guided_decoding_guide_type {guide_type!r} is not supported")

    def matcher(self, compiled: xgr.CompiledGrammar, end_ids: frozenset[int]) -> GuideMatcher:
        return GuideMatcher(compiled, self.vocab_size, end_ids)


class GuideMatcher:
    """One sequence's position in its grammar. `end_ids` are the sequence's end tokens: the grammar allows one of
    them once complete, and accepting it terminates the matcher (the sequence ends "stop"). With no end ids (the
    request asked for exactly max_tokens) the matcher terminates when the grammar is complete."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int, end_ids: frozenset[int]):
        self.vocab_size = vocab_size
        if end_ids:
            self._matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=sorted(end_ids))
        else:
            self._matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
        self._bitmask = np.zeros(xgr.get_bitmask_shape(1, vocab_size), dtype=np.int32)
        self.refused: int | None = None  # a token the grammar did not allow (the mask rules it out)

    def allowed(self) -> np.ndarray | None:
        """The tokens the grammar allows next, as a boolean mask over the vocabulary; None when it allows all."""
        if not self._matcher.fill_next_token_bitmask(self._bitmask):
            return None
        # bit j of int32 word w is token 32 w + j: the words' little-endian bytes, each unpacked low bit first
        return np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")[: self.vocab_size].view(np.bool_)

    def fill(self, bitmask, row: int) -> None:
        """Write the allowed tokens' bits into row `row` of a caller's int32 bitmask on the host (the fast core's)."""
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> bool:
        """Advance past the sampled token; False if the grammar does not allow it (the state is then unchanged and
        `refused` names the token)."""
        accepted = bool(self._matcher.accept_token(token))
        if not accepted:
            self.refused = token
        return accepted

    @property
    def terminated(self) -> bool:
        return bool(self._matcher.is_terminated())
