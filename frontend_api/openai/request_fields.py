"""The request fields of OpenAI's and vLLM's chat and completions APIs that we do not honour.

Each is declared, so that it is known: a request may send it as null or with a value that changes nothing here
(its default, e.g. `"min_p": 0`, `"functions": []`, as SDKs and frameworks send them); any other
value is a 400 naming the field. A field that neither API defines is refused as unrecognized (the request
models forbid extra fields). The fields we honour are declared in protocol.py.

Sources: OpenAI's request bodies as the `openai` Python SDK types them (openai/types/chat/completion_create_params.py
and openai/types/completion_create_params.py, SDK 3.57) and vLLM's (vllm/entrypoints/openai/chat_completion/
protocol.py and completion/protocol.py on main, plus the fields of the 0.10 releases since removed: best_of in chat,
guided_*, structural_tag, logits_processors).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema


class Refused:
    """Marks a known field we do not honour: accepted as null or one of `accepted`, else a 400 with `reason`."""

    def __init__(self, *accepted: Any, reason: str = "not supported"):
        self.accepted = accepted
        self.reason = reason

    def _check(self, value: Any) -> None:
        if value is not None and not any(_same(value, default) for default in self.accepted):
            raise ValueError(f"{self.reason} (accepted: {', '.join(json.dumps(v) for v in (None, *self.accepted))})")

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        accepted = " or ".join(json.dumps(v) for v in (None, *self.accepted))
        reason = "" if self.reason == "not supported" else f" ({self.reason})"
        return {"enum": [None, *self.accepted], "description": f"Not supported{reason}: only {accepted} is accepted."}


def _same(value: Any, default: Any) -> bool:
    """Equal as JSON values: 1 is 1.0, but true is not 1."""
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    if isinstance(value, int | float) and isinstance(default, int | float):
        return value == default
    return type(value) is type(default) and value == default


NULL = Annotated[Any, Refused()]
EMPTY_LIST = Annotated[Any, Refused([])]
EMPTY_OBJECT = Annotated[Any, Refused({})]
FALSE = Annotated[Any, Refused(False)]
TRUE = Annotated[Any, Refused(True)]


class RefusedFields(BaseModel):
    """Both chat and completions (vLLM's extras; n, logit_bias, stop_token_ids and bad_words are honoured)."""

    # vLLM's sampling parameters (top_k, repetition_penalty, min_tokens, ignore_eos, stop_token_ids and bad_words
    # are honoured)
    min_p: Annotated[Any, Refused(0)] = None
    use_beam_search: FALSE = None
    length_penalty: Annotated[Any, Refused(1)] = None
    watermarking: FALSE = None
    include_stop_str_in_output: FALSE = None
    skip_special_tokens: TRUE = None
    spaces_between_special_tokens: TRUE = None
    truncate_prompt_tokens: NULL = None
    truncation_side: NULL = None
    prompt_logprobs: NULL = None
    logprob_token_ids: NULL = None
    allowed_token_ids: NULL = None
    # vLLM's extra parameters
    add_special_tokens: NULL = None  # whether a BOS is added depends on the engine
    # structured output: honoured in structured_protocol.py (StructuredOutputFields), but for these options
    guided_decoding_backend: Annotated[Any, Refused("auto", reason="the engine's own backend is used")] = None
    guided_whitespace_pattern: NULL = None
    structural_tag: NULL = None
    logits_processors: NULL = None
    priority: Annotated[Any, Refused(0)] = None
    request_id: NULL = None
    return_tokens_as_token_ids: FALSE = None
    return_token_ids: FALSE = None
    return_token_offsets: FALSE = None
    return_mm_kwargs: TRUE = None
    routed_experts_prompt_start: Annotated[Any, Refused(0)] = None
    cache_salt: NULL = None
    kv_transfer_params: NULL = None
    ec_transfer_params: NULL = None
    vllm_xargs: EMPTY_OBJECT = None
    repetition_detection: NULL = None
    stream_interval: Annotated[Any, Refused(1)] = None
    thinking_token_budget: NULL = None


class RefusedChatFields(RefusedFields):
    best_of: Annotated[Any, Refused(1, reason="one choice is generated per choice")] = None  # vLLM 0.10's
    # The deprecated forms of tools / tool_choice (those are honoured: protocol.py).
    functions: Annotated[Any, Refused([], reason="deprecated: use tools")] = None
    function_call: Annotated[Any, Refused("none", "auto", reason="deprecated: use tool_choice")] = None
    audio: NULL = None
    modalities: Annotated[Any, Refused(["text"], reason="text output only")] = None
    prediction: NULL = None
    reasoning_effort: NULL = None
    verbosity: Annotated[Any, Refused("medium")] = None
    web_search_options: NULL = None
    moderation: NULL = None
    service_tier: Annotated[Any, Refused("auto", "default")] = None
    store: Annotated[Any, Refused(False, reason="nothing is stored")] = None
    metadata: Annotated[Any, Refused({}, reason="nothing is stored")] = None
    prompt_cache_options: NULL = None
    prompt_cache_retention: NULL = None
    # vLLM's chat extras
    add_generation_prompt: TRUE = None
    continue_final_message: FALSE = None
    documents: NULL = None
    chat_template: NULL = None
    chat_template_kwargs: EMPTY_OBJECT = None
    media_io_kwargs: EMPTY_OBJECT = None
    mm_processor_kwargs: EMPTY_OBJECT = None
    include_reasoning: TRUE = None
    return_prompt_text: FALSE = None


class RefusedCompletionFields(RefusedFields):
    suffix: NULL = None
    prompt_embeds: NULL = None
    session_id: NULL = None  # vLLM's; ours is chat's stored session
