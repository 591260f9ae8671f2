"""`/v1/admin/twins`: list, add and remove twins while the server runs (TWIN_ADMIN_KEY).

Adding reads and checks the adapter off the event loop and loads it between two decode steps
(`TwinService.add_twin`): requests of the other twins keep streaming. Removing takes the twin off the
list at once; its requests in flight finish. A bad adapter is 400 with the file and the fix, a taken name
or a full server 409, an unknown twin 404, a missing or wrong admin key 401.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, status

from finetune.twin import TwinError
from serve.deps import ADMIN_PREFIX, ServiceDep, require_admin_key, require_json
from serve.engine import EngineError, EngineNotReady
from serve.schemas import AddTwin, ErrorResponse, TwinCard, TwinList
from serve.service import TwinConflict, UnknownTwin

router = APIRouter(
    prefix=ADMIN_PREFIX,
    tags=["admin"],
    dependencies=[Depends(require_admin_key)],
    responses={401: {"model": ErrorResponse, "description": "missing or wrong admin key (or admin is off)"}},
)


@router.get("/twins", response_model=TwinList)
def list_twins(service: ServiceDep) -> TwinList:
    """Every twin served, with its adapter, prompt format, rank and memory."""
    twins = sorted(service.twins.values(), key=lambda twin: (twin.slot, twin.name))
    return TwinList(data=[TwinCard(**twin.card()) for twin in twins], max_twins=service.twin_slots)


@router.post(
    "/twins",
    response_model=TwinCard,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_json)],
    responses={
        400: {"model": ErrorResponse, "description": "the adapter cannot be served (see detail)"},
        409: {"model": ErrorResponse, "description": "the name is taken, or every twin slot is"},
        503: {"model": ErrorResponse, "description": "the model is still loading"},
    },
)
async def add_twin(body: AddTwin, service: ServiceDep) -> TwinCard:
    """Serve another twin of this base: its adapter is loaded without a restart."""
    try:
        twin = await service.add_twin(body.name, Path(body.adapter))
    except TwinError as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(e)) from e
    except (OSError, ValueError) as e:  # a path the system refuses, a file that is not text, ...
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"cannot read the adapter at {body.adapter[:200]!r}: {unreadable(e)}",
        ) from e
    except TwinConflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(e)) from e
    except (EngineNotReady, EngineError) as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the model is not ready: {e}") from e
    return TwinCard(**twin.card())


def unreadable(e: Exception) -> str:
    """Why an adapter could not be read, without the file's bytes (a decode error quotes them)."""
    if isinstance(e, UnicodeDecodeError):
        return f"a file in it is not UTF-8 text ({e.reason})"
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    return str(e) or type(e).__name__


@router.delete(
    "/twins/{name}",
    response_model=TwinCard,
    responses={404: {"model": ErrorResponse, "description": "no twin of that name"}},
)
async def remove_twin(name: str, service: ServiceDep) -> TwinCard:
    """Stop serving a twin (its requests in flight finish)."""
    try:
        twin = await service.remove_twin(name)
    except UnknownTwin as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(e)) from e
    return TwinCard(**twin.card())
