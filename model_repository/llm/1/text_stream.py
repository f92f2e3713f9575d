"""Incremental detokenization with stop strings, for one request.

Pure Python over a tokenizer's `decode`; no Triton or torch import, so it is unit-tested on its own.

Two things make streaming text hard:
- a token can end in the middle of a multi-byte character (emoji, CJK): the decoder then yields U+FFFD, and we
  hold the text back until the next token completes the character;
- a stop string can span several tokens: we hold back the longest tail of the text that could still become a
  stop string, and release it once it cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT_CHAR = "\ufffd"


def fast_decoder(tokenizer):
    """The tokenizer's Rust `tokenizers.Tokenizer` when it decodes identically (no space clean-up), else the tokenizer.

    transformers' `decode` wraps the Rust one in Python that costs ~3x the decoding itself (11 vs 3 us a token for
    SmolLM2 here), paid for every generated token.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return tokenizer
    return backend


class TextStream:
    def __init__(self, tokenizer, stop: Sequence[str] = (), skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._skip_special = skip_special_tokens
        self._tokens: list[int] = []
        # Decode a window of tokens rather than the whole list: tokenizers add spaces depending on the previous
        # token, so text(prefix..read) is decoded with a little left context (the vLLM/TGI offsets scheme).
        self._prefix_offset = 0
        self._read_offset = 0
        self._text = ""  # everything decoded so far (complete characters only)
        self._emitted = 0  # how much of _text has been returned to the caller
        self.stopped = False  # a stop string was found; no more text will be returned

    @property
    def num_tokens(self) -> int:
        return len(self._tokens)

    def push(self, token_ids: Sequence[int]) -> str:
        """Add generated tokens; return the text that is now safe to send (possibly empty)."""
        if self.stopped:
            return ""
        self._tokens.extend(token_ids)
        prefix_text = self._decode(self._prefix_offset, self._read_offset)
        new_text = self._decode(self._prefix_offset, len(self._tokens))
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHAR):
            self._text += new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._tokens)
        return self._release(final=False)

    def finish(self) -> str:
        """The request ended: return whatever is still held back (incomplete characters are dropped)."""
        if self.stopped:
            return ""
        if self._read_offset < len(self._tokens):
            tail = self._decode(self._prefix_offset, len(self._tokens))
            head = self._decode(self._prefix_offset, self._read_offset)
            self._text += tail[len(head) :].rstrip(REPLACEMENT_CHAR)
            self._read_offset = len(self._tokens)
        return self._release(final=True)

    def full_text(self) -> str:
        return self._text[: self._emitted]

    def _decode(self, start: int, end: int) -> str:
        if start >= end:
            return ""
        return self._tokenizer.decode(self._tokens[start:end], skip_special_tokens=self._skip_special)

    def _release(self, final: bool) -> str:
        if self._stop:
            # Only the not-yet-emitted text (plus a stop string's length of context) can contain a new match.
            window_start = max(0, self._emitted - max(map(len, self._stop)) + 1)
            hits = [i for s in self._stop if (i := self._text.find(s, window_start)) != -1]
            if hits:
                self._text = self._text[: min(hits)]
                self.stopped = True
                final = True
        end = len(self._text) if final else len(self._text) - self._held_back()
        end = max(end, self._emitted)
        out = self._text[self._emitted : end]
        self._emitted = end
        return out

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
