"""`GET /health` (is the model loaded, on what, how long start-up took), `GET /v1/models` (the twins) and
`GET /v1/models/{model}` (one of them, as OpenAI's retrieve-model)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Response, status

from serve.deps import ServiceDep, SettingsDep, require_api_key
from serve.schemas import ErrorResponse, Health, ModelCard, ModelList
from serve.service import UnknownTwin

router = APIRouter()


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "loading (retry), or the model failed to load"}},
    tags=["meta"],
)
def health(service: ServiceDep, settings: SettingsDep, response: Response) -> Health:
    """Ready once the model is loaded and warmed up (compiled); 503 until then. Needs no API key."""
    stats = service.engine.stats()
    ready = stats["state"] == "ready"
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = str(settings.retry_after)
    return Health(
        status="ok" if ready else "loading" if stats["state"] in ("created", "loading") else stats["state"],
        ready=ready,
        model=settings.model_name,
        device=stats["device"],
        dtype=stats["dtype"],
        compiled=stats["compiled"],
        fused_blocks=stats["fused_blocks"],
        triton_kernels=stats["triton_kernels"],
        compile_error=stats["compile_error"],
        load_error=stats["load_error"],
        startup_seconds=stats["startup_seconds"],
        compile_seconds=stats["compile_seconds"],
        compile_cache_warm=stats["compile_cache_warm"] if stats["compiled"] else None,
        max_batch_size=stats["max_batch_size"],
        max_input_tokens=service.limits.max_input_tokens,
        max_new_tokens=service.limits.max_new_tokens,
        active=stats["active"],
        queued=stats["queued"],
        prefilling=stats["prefilling"],
        prefill_chunks=stats["prefill_chunks"],
        decode_steps=stats["decode_steps"],
        tokens_generated=stats["tokens_generated"],
        finished=stats["finished"],
        memory_exchanges=len(service.memory) if service.memory is not None else 0,
        memory_k=service.memory_k,
        twins=sorted(service.twins),
        max_twins=service.twin_slots,
    )


@router.get(
    "/v1/models",
    response_model=ModelList,
    dependencies=[Depends(require_api_key)],
    responses={401: {"model": ErrorResponse}},
    tags=["models"],
)
def list_models(service: ServiceDep) -> ModelList:
    """The twins this server serves: ask for one by its id in a request's `model`."""
    twins = sorted(service.twins.values(), key=lambda twin: (twin.slot, twin.name))
    return ModelList(
        data=[ModelCard(id=twin.name, created=twin.created or service.created) for twin in twins]
    )


@router.get(
    "/v1/models/{model}",
    response_model=ModelCard,
    dependencies=[Depends(require_api_key)],
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse, "description": "no such model"}},
    tags=["models"],
)
def retrieve_model(model: str, service: ServiceDep) -> ModelCard:
    """One twin this server serves, by its id."""
    try:
        twin = service.twin(model)
    except UnknownTwin as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(e)) from e
    return ModelCard(id=twin.name, created=twin.created or service.created)
