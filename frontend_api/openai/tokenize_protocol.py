"""Requests and answers of vLLM's POST /tokenize and POST /detokenize (vllm/entrypoints/serve/tokenize/protocol.py:
TokenizeCompletionRequest | TokenizeChatRequest, TokenizeResponse, DetokenizeRequest, DetokenizeResponse).

vLLM's two tokenize forms are one model here, so that a field neither form has is refused as unrecognized (vLLM
itself ignores it): exactly one of `prompt` (text, tokenized as is) and `messages` (rendered with the model's chat
template, as /v1/chat/completions renders them, so `count` is the `prompt_tokens` a chat completion reports).
vLLM's chat-form fields that we do not honour are accepted only with the value that changes nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from frontend_api.errors import OpenAIError
from frontend_api.openai.protocol import ChatMessage
from frontend_api.openai.request_fields import EMPTY_OBJECT, FALSE, NULL
from frontend_api.openai.tool_protocol import ToolDefinition

# What check_form() enforces, for the schema at /openapi.json: a prompt (without add_generation_prompt), or messages.
EXACTLY_ONE_FORM: dict[str, Any] = {
    "oneOf": [
        {
            "required": ["prompt"],
            "properties": {"prompt": {"type": "string"}},
            "not": {
                "anyOf": [{"required": ["messages"]}, {"required": ["add_generation_prompt"]}, {"required": ["tools"]}]
            },
        },
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}, "not": {"required": ["prompt"]}},
    ]
}


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=EXACTLY_ONE_FORM)

    model: str = Field(min_length=1)
    prompt: str | None = Field(None, description="Text to tokenize (or send `messages`).")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, description="A chat to render with the model's chat template and tokenize."
    )
    add_special_tokens: bool | None = Field(
        None,
        description="Let the tokenizer add its special tokens (e.g. BOS). Default: true for `prompt`, false for "
        "`messages` (the chat template writes them), as vLLM.",
    )
    add_generation_prompt: bool | None = Field(
        None,
        description="With `messages`: end with the assistant's turn opening, as a chat completion does. Default true.",
    )
    return_token_strs: bool = Field(False, description="Also answer each token's string (`token_strs`).")
    # vLLM's chat-form fields we do not honour: /v1/chat/completions refuses them too, so `count` stays its count.
    continue_final_message: FALSE = None
    chat_template: NULL = None
    chat_template_kwargs: EMPTY_OBJECT = None
    media_io_kwargs: EMPTY_OBJECT = None
    mm_processor_kwargs: EMPTY_OBJECT = None
    tools: list[ToolDefinition] | None = Field(
        None, description="With `messages`: the tools offered, rendered as /v1/chat/completions renders them."
    )

    def check_form(self) -> None:
        """Exactly one of prompt and messages; add_generation_prompt only with messages (400s naming the field)."""
        if self.prompt is not None and self.messages is not None:
            raise OpenAIError(400, "messages: send either prompt or messages, not both.", param="messages")
        if self.prompt is None and self.messages is None:
            raise OpenAIError(400, "prompt: send a prompt (text) or messages (a chat) to tokenize.", param="prompt")
        if self.prompt is not None and self.add_generation_prompt is not None:
            message = "add_generation_prompt: only applies to messages (a prompt is tokenized as it is)."
            raise OpenAIError(400, message, param="add_generation_prompt")
        if self.prompt is not None and self.tools:
            raise OpenAIError(400, "tools: only apply to messages (a prompt is tokenized as it is).", param="tools")

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools as the chat template gets them (tool_calls.offered_tools' form)."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None

    @property
    def special_tokens(self) -> bool:
        if self.add_special_tokens is not None:
            return self.add_special_tokens
        return self.messages is None

    @property
    def generation_prompt(self) -> bool:
        return self.add_generation_prompt is not False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = Field(None, description="Only when return_token_strs is true.")


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1)
    tokens: list[int] = Field(description="Token ids of the model's vocabulary.")


class DetokenizeResponse(BaseModel):
    prompt: str
