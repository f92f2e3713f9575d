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
_PIECES: dict[int, tuple[object, dict[int, str]]] = {}  # id(tokenizer) -> (tokenizer, its plain pieces)


def fast_decoder(tokenizer):
    """The tokenizer's Rust `tokenizers.Tokenizer` when it decodes identically (no space clean-up), else the tokenizer.

    transformers' `decode` wraps the Rust one in Python that costs ~3x the decoding itself (11 vs 3 us a token for
    SmolLM2 here), paid for every generated token.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return tokenizer
    return backend


def plain_pieces(tokenizer) -> dict[int, str] | None:
    """A cache (token id -> its text) of the tokenizer's "plain" tokens, for TextStream's fast path; None when the
    tokenizer is not a Rust `tokenizers.Tokenizer` with a bare ByteLevel decoder.

    Why: a ByteLevel decoder maps every token to bytes and decodes their concatenation (lossily), so a token whose
    bytes are complete UTF-8 on their own (it decodes alone with no U+FFFD) adds exactly its own text after any
    earlier tokens. TextStream then appends it without decoding a window twice (2 decodes per token otherwise).
    Filled lazily; "" marks a token that is not plain (added tokens, partial characters)."""
    try:
        from tokenizers import Tokenizer, decoders
    except ImportError:
        return None
    if not isinstance(tokenizer, Tokenizer) or type(tokenizer.decoder) is not decoders.ByteLevel:
        return None
    entry = _PIECES.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        entry = _PIECES[id(tokenizer)] = (tokenizer, dict.fromkeys(tokenizer.get_added_tokens_decoder(), ""))
    return entry[1]


def _plain_piece(tokenizer, token: int) -> str:
    try:
        text = tokenizer.decode([token], skip_special_tokens=False)
    except Exception:  # e.g. an id past the vocabulary: the slow path decides what happens
        return ""
    return "" if REPLACEMENT_CHAR in text else text


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
        self._pieces = plain_pieces(tokenizer)

    @property
    def num_tokens(self) -> int:
        return len(self._tokens)

    def push(self, token_ids: Sequence[int]) -> str:
        """Add generated tokens; return the text that is now safe to send (possibly empty)."""
        if self.stopped:
            return ""
        if self._pieces is not None and len(token_ids) == 1 and self._read_offset == len(self._tokens):
            # Fast path: nothing held back and a plain token (see plain_pieces): its text is what the windowed
            # decode below would add, and the offsets move as they would there.
            token = token_ids[0]
            piece = self._pieces.get(token)
            if piece is None:
                piece = self._pieces[token] = _plain_piece(self._tokenizer, token)
            if piece:
                self._tokens.append(token)
                self._text += piece
                self._prefix_offset, self._read_offset = self._read_offset, len(self._tokens)
                if not self._stop:  # nothing held back: everything decoded is released
                    self._emitted = len(self._text)
                    return piece
                return self._release(final=False)
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
