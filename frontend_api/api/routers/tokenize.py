"""vLLM's POST /tokenize and POST /detokenize, at the root as vLLM serves them: the served model's own tokenizer
(and chat template), without the engine."""

from typing import Any

from fastapi import APIRouter

from frontend_api.api.deps import ServingDep
from frontend_api.errors import ErrorResponse
from frontend_api.openai.tokenize_protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter(tags=["tokenize"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}


@router.post("/tokenize", response_model=TokenizeResponse, response_model_exclude_none=True, responses=ERRORS)
async def tokenize(body: TokenizeRequest, serving: ServingDep) -> TokenizeResponse:
    body.check_form()
    model = await serving.resolve_model(body.model)
    tokenizers = serving.tokenizers
    if body.messages is not None:  # rendered exactly as /v1/chat/completions renders them
        text = await tokenizers.render_chat(
            model, body.messages, body.template_tools, add_generation_prompt=body.generation_prompt
        )
    else:
        assert body.prompt is not None
        text = body.prompt
    tokens = await tokenizers.encode(model, text, body.special_tokens)
    strings = await tokenizers.token_strings(model, tokens) if body.return_token_strs else None
    return TokenizeResponse(count=len(tokens), max_model_len=model.max_model_len, tokens=tokens, token_strs=strings)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
async def detokenize(body: DetokenizeRequest, serving: ServingDep) -> DetokenizeResponse:
    model = await serving.resolve_model(body.model)
    await serving.check_token_ids(model, {"tokens": body.tokens})
    return DetokenizeResponse(prompt=await serving.tokenizers.decode(model, body.tokens))
