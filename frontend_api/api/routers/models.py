from fastapi import APIRouter

from frontend_api.api.deps import ServingDep, StartedAtDep
from frontend_api.errors import ErrorResponse
from frontend_api.openai.response_objects import ModelCard, ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList)
async def list_models(serving: ServingDep, started_at: StartedAtDep) -> ModelList:
    return await serving.list_models(created=started_at)


# `:path` because served ids may contain slashes (e.g. "HuggingFaceTB/SmolLM2-135M-Instruct").
@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def retrieve_model(model_id: str, serving: ServingDep, started_at: StartedAtDep) -> ModelCard:
    return await serving.get_model(model_id, created=started_at)
