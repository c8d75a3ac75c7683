"""The entity's binding API as an ASGI app (FastAPI), served by uvicorn.

``POST /api/binding/{generate-keys,distribute-key,revoke}`` take a signed
:class:`~modbatt.protocol.messages.ControllerRequest` as JSON. Bodies are capped before
they are parsed, duplicate JSON keys and non-finite numbers are refused, and every
rejection is a 4xx JSON ``{"error": reason, "detail": text}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..encoding import strict_json_loads
from ..errors import EncodingError, Reason
from .entity import EntityNode, rejection

__all__ = ["MAX_BODY_BYTES", "create_entity_app"]

#: Largest request body accepted (a distribute-key request is about 2 KiB).
MAX_BODY_BYTES = 16 * 1024


async def _read_capped(request: Request) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def create_entity_app(node: EntityNode) -> FastAPI:
    """An ASGI app serving ``node``'s binding API."""
    app = FastAPI(title="modbatt entity binding API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/api/entity")
    async def describe() -> dict[str, Any]:
        # Public facts only: access data and the identity public key's id.
        return {
            "access_data": node.access_data.to_dict(),
            "identity_key_id": node.identity_key.key_id().hex(),
        }

    @app.post("/api/binding/{op}")
    async def binding_op(op: str, request: Request) -> JSONResponse:
        body = await _read_capped(request)
        if body is None:
            return JSONResponse(
                rejection(Reason.OVERSIZED, f"request body exceeds {MAX_BODY_BYTES} bytes"), status_code=413
            )
        try:
            payload = strict_json_loads(body)
        except EncodingError as exc:
            return JSONResponse(rejection(Reason.MALFORMED, f"body is {exc}"), status_code=400)
        # Key-store writes fsync: keep them off the event loop.
        status, answer = await run_in_threadpool(node.handle, op, payload)
        return JSONResponse(answer, status_code=status)

    return app
