"""FastAPI dependencies: settings, the service, the API-key and admin-key checks, and the JSON
content-type check; and the checks `serve.app` runs on a request's headers before its body is read."""

from __future__ import annotations

import re
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from serve.service import TwinService
from serve.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]

API_PREFIX = "/v1"
"""The API's endpoints (TWIN_API_KEY)."""
ADMIN_PREFIX = "/v1/admin"
"""The admin endpoints (TWIN_ADMIN_KEY instead)."""


def get_service(request: Request) -> TwinService:
    service: TwinService = request.app.state.service
    return service


ServiceDep = Annotated[TwinService, Depends(get_service)]

_bearer = HTTPBearer(auto_error=False, description="the server's TWIN_API_KEY, when it has one")
_admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminKey", description="the server's TWIN_ADMIN_KEY (admin endpoints)"
)


def require_api_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """With TWIN_API_KEY set, every /v1 call needs `Authorization: Bearer <key>`."""
    if settings.api_key is None:
        return
    check_bearer(
        credentials, settings.api_key, "missing or wrong API key: send 'Authorization: Bearer <TWIN_API_KEY>'"
    )


def check_bearer(credentials: HTTPAuthorizationCredentials | None, key: SecretStr, detail: str) -> None:
    """401 with `detail` unless the request's bearer token is `key` (compared in constant time)."""
    given = (credentials.credentials if credentials is not None else "").encode()
    if credentials is None or not secrets.compare_digest(given, key.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
        )


def require_admin_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)]
) -> None:
    """The admin endpoints need `Authorization: Bearer <TWIN_ADMIN_KEY>`; without that key set, they
    are off (401 saying so)."""
    if settings.admin_key is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="the admin endpoints are off: start the server with TWIN_ADMIN_KEY set, then send "
            "'Authorization: Bearer <TWIN_ADMIN_KEY>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    check_bearer(
        credentials,
        settings.admin_key,
        "missing or wrong admin key: send 'Authorization: Bearer <TWIN_ADMIN_KEY>'",
    )


def require_json(request: Request) -> None:
    """415 unless the body comes as `Content-Type: application/json` (or `application/*+json`).

    Besides saying what is wrong, this keeps browsers' "simple" cross-site POSTs (text/plain, form
    encodings, or no type at all), which need no CORS preflight, from reaching the model."""
    given = request.headers.get("content-type")
    media = (given or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        detail="send the request body as JSON with the header 'Content-Type: application/json' "
        + (f"(got {given[:100]!r})" if given else "(the request had no Content-Type)"),
    )


CODING_NAME = re.compile(r"[A-Za-z0-9._-]{1,20}")
"""A content coding's name (gzip, br, x-gzip, ...): named in the 415; anything else is not repeated."""


def require_identity_encoding(request: Request) -> None:
    """415 for a body sent compressed (`Content-Encoding: gzip`, ...): it is read as it comes, so a gzip
    body would otherwise be refused as "not UTF-8 text", and a mislabelled plain one parsed as JSON."""
    coding = request.headers.get("content-encoding", "").strip()
    if coding.lower() in ("", "identity"):
        return
    named = f"'Content-Encoding: {coding}'" if CODING_NAME.fullmatch(coding) else "a Content-Encoding"
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        detail=f"the body was sent with {named}: this server reads only uncompressed bodies; send it "
        "without a Content-Encoding",
        headers={"Accept-Encoding": "identity"},
    )


async def check_headers_first(request: Request, settings: Settings) -> None:
    """What a request's headers alone refuse, whatever its body: the key of the endpoint it goes to (401;
    /v1/admin the admin key, the rest of /v1 the API key) and a compressed POST body (415). `serve.app` runs
    this before the body is read, so a client without the key never gets its body parsed (nor learns
    from a 400 or 422 what the endpoint would make of it); the routes' own key dependencies stay, and
    say so in the OpenAPI schema."""
    path = request.scope["path"]
    if path == ADMIN_PREFIX or path.startswith(f"{ADMIN_PREFIX}/"):
        require_admin_key(settings, await _admin_bearer(request))
    elif path.startswith(f"{API_PREFIX}/"):
        require_api_key(settings, await _bearer(request))
    if request.method == "POST":  # the only requests whose bodies are read
        require_identity_encoding(request)
