"""Chat templates and token counts, per served model.

Uses the `tokenizers` library and a sandboxed Jinja environment instead of `transformers.AutoTokenizer`:
transformers imports torch as soon as torch is installed, and the front-end must stay torch-free. The Jinja
setup mirrors transformers' `apply_chat_template` (trim_blocks, lstrip_blocks, loopcontrols, tojson,
raise_exception, strftime_now) so prompts render identically.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from frontend_api.engine.protocol import EngineModel
from frontend_api.errors import OpenAIError
from frontend_api.openai.protocol import ChatMessage
from frontend_api.openai.tool_calls import parser_of, template_messages

logger = logging.getLogger(__name__)


class _TemplateRaised(Exception):
    """A chat template called raise_exception(): the conversation is invalid for this model."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: the character that stands for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_LEVEL = _byte_level_alphabet()
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece's byte tokens


@dataclass(frozen=True)
class TokenPiece:
    """One token as logprobs show it: its decoded text, and the UTF-8 bytes it stands for (a byte-level piece
    that is part of a character: its own raw bytes, while its text is the replacement character)."""

    text: str
    bytes: list[int]


@dataclass(frozen=True)
class ModelTokenizer:
    tokenizer: Tokenizer
    chat_template: jinja2.Template | None
    special_tokens: dict[str, str]  # bos_token, eos_token, ... as the template expects them
    pieces: dict[int, TokenPiece] = field(default_factory=dict)  # cache of piece()
    byte_level: bool = False
    template_knows_tools: bool = False  # the template reads `tools` (else tool_calls.py writes them for it)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def piece(self, token_id: int) -> TokenPiece:
        if (cached := self.pieces.get(token_id)) is not None:
            return cached
        text = self.decode([token_id]) if 0 <= token_id < self.vocab_size else ""
        raw = text.encode("utf-8")
        if "\ufffd" in text and (token := self.tokenizer.id_to_token(token_id)) is not None:
            if self.byte_level and all(char in _BYTE_LEVEL for char in token):
                raw = bytes(_BYTE_LEVEL[char] for char in token)
            elif fallback := _BYTE_FALLBACK.fullmatch(token):
                raw = bytes([int(fallback.group(1), 16)])
        piece = self.pieces[token_id] = TokenPiece(text, list(raw))
        return piece

    def render_chat(self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        if self.chat_template is None:
            raise OpenAIError(400, "This model has no chat template; use /v1/completions.", param="messages")
        try:
            return self.chat_template.render(
                messages=list(messages), add_generation_prompt=True, tools=tools, documents=None, **self.special_tokens
            )
        except _TemplateRaised as exc:
            raise OpenAIError(400, f"The conversation is not valid for this model: {exc}", param="messages") from exc
        except jinja2.TemplateError as exc:
            logger.warning("chat template failed to render: %s", exc)
            message = "The model's chat template could not render these messages."
            raise OpenAIError(400, message, param="messages") from exc

    def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def load_model_tokenizer(tokenizer_dir: str | Path) -> ModelTokenizer:
    """Read tokenizer.json, tokenizer_config.json and chat_template.jinja (transformers' save layout)."""
    directory = Path(tokenizer_dir)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}

    template_path = directory / "chat_template.jinja"
    source = template_path.read_text(encoding="utf-8") if template_path.is_file() else config.get("chat_template")
    if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    environment = _environment()
    template = environment.from_string(source) if isinstance(source, str) and source else None
    # As vLLM decides whether a template renders tools: it reads the variable.
    knows_tools = isinstance(source, str) and "tools" in meta.find_undeclared_variables(environment.parse(source))

    special = {}
    for key, value in config.items():
        if key.endswith("_token") and (content := _token_content(value)) is not None:
            special[key] = content
    decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    byte_level = decoder.get("type") == "ByteLevel" or any(
        d.get("type") == "ByteLevel" for d in decoder.get("decoders", []) if isinstance(d, dict)
    )
    return ModelTokenizer(
        tokenizer=tokenizer,
        chat_template=template,
        special_tokens=special,
        byte_level=byte_level,
        template_knows_tools=knows_tools,
    )


class Tokenizers:
    """Per-model tokenizer cache. Loading and tokenizing run off the event loop, on one worker thread so that
    a tokenizer is never used by two threads at once."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        self._loaded: dict[str, asyncio.Future[ModelTokenizer]] = {}

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def get(self, model: EngineModel) -> ModelTokenizer:
        future = self._loaded.get(model.tokenizer_dir)
        if future is None:
            future = asyncio.ensure_future(self._run(load_model_tokenizer, model.tokenizer_dir))
            self._loaded[model.tokenizer_dir] = future
        try:
            # shield: one caller giving up (client gone) must not cancel the load the others wait for
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._loaded.pop(model.tokenizer_dir, None)  # retry on the next request
            logger.error("cannot load the tokenizer of %s from %s: %s", model.id, model.tokenizer_dir, exc)
            raise OpenAIError(500, f"The tokenizer of model `{model.id}` could not be loaded.") from exc

    async def render_chat(
        self, model: EngineModel, messages: Sequence[ChatMessage], tools: list[dict[str, Any]] | None = None
    ) -> str:
        """The prompt of a chat: its messages and the tools offered (tool_calls.py: how they are written)."""
        tokenizer = await self.get(model)
        native = tokenizer.template_knows_tools
        rendered = template_messages(messages, tools, parser_of(model), native)
        return await self._run(tokenizer.render_chat, rendered, tools if native else None)

    async def count_tokens(self, model: EngineModel, text: str, add_special_tokens: bool = True) -> int:
        tokenizer = await self.get(model)
        return await self._run(tokenizer.count_tokens, text, add_special_tokens)

    async def vocab_size(self, model: EngineModel) -> int:
        return (await self.get(model)).vocab_size

    async def encode(self, model: EngineModel, text: str, add_special_tokens: bool = True) -> list[int]:
        tokenizer = await self.get(model)
        return await self._run(tokenizer.encode, text, add_special_tokens)

    async def decode(self, model: EngineModel, ids: Sequence[int]) -> str:
        tokenizer = await self.get(model)
        return await self._run(tokenizer.decode, ids)

    async def pieces(self, model: EngineModel, ids: Sequence[int]) -> list[TokenPiece]:
        """The logprobs view of each token id (see TokenPiece)."""
        tokenizer = await self.get(model)
        if all(i in tokenizer.pieces for i in ids):  # cached: no thread hop
            return [tokenizer.pieces[i] for i in ids]
        return await self._run(lambda: [tokenizer.piece(i) for i in ids])

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
