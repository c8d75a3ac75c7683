"""The controller's event intake over HTTP: ``POST /api/events`` and the client an entity flushes with.

Request ``{"events": [base64 CBOR entity event…], "since": tree size | null}``; answer the
:class:`~modbatt.nodes.events.Receipt` as JSON (byte strings in base64), or a 4xx
``{"error": reason, "detail"}`` for a classified refusal. Bodies are capped before parsing and
duplicate JSON keys are refused, as on the entity's binding API (:mod:`modbatt.nodes.entity_api`).
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..encoding import strict_json_loads
from ..errors import EncodingError, Reason, TransportError, VerificationError
from ..model._fields import b64, b64_bytes, expect_map
from ..transport.http import _raise_rejection
from .entity import rejection
from .entity_api import _read_capped
from .errors_http import http_status
from .events import FLUSH_BATCH, EventIntake, Receipt

__all__ = ["EVENTS_PATH", "HttpEventSubmitter", "create_controller_app"]

EVENTS_PATH = "/api/events"


def _parse(body: bytes) -> tuple[list[bytes], int | None]:
    m = expect_map(strict_json_loads(body), "events request", required={"events", "since"})
    events = m["events"]
    if not isinstance(events, list) or len(events) > FLUSH_BATCH:
        raise VerificationError(Reason.OVERSIZED, f"at most {FLUSH_BATCH} events per request")
    since = m["since"]
    if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
        raise VerificationError(Reason.MALFORMED, "since is a tree size or null")
    return [b64_bytes(e, "events", max_len=1024) for e in events], since


def create_controller_app(intake: EventIntake) -> FastAPI:
    """An ASGI app serving the controller's event intake."""
    app = FastAPI(title="modbatt controller events API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(EVENTS_PATH)
    async def events(request: Request) -> JSONResponse:
        body = await _read_capped(request)
        if body is None:
            return JSONResponse(rejection(Reason.OVERSIZED, "request body too large"), status_code=413)
        try:
            batch, since = _parse(body)
            # Ledger appends fsync: keep them off the event loop.
            receipt = await run_in_threadpool(intake.submit, batch, since)
        except (VerificationError, EncodingError) as exc:
            return JSONResponse(rejection(exc.reason, str(exc)), status_code=http_status(exc.reason))
        return JSONResponse(receipt.to_json())

    return app


class HttpEventSubmitter:
    """An entity's :data:`~modbatt.nodes.events.Submit` over HTTP (``TransportError`` when unreachable)."""

    def __init__(self, url: str, *, timeout: float = 3.0) -> None:
        self.url = url.rstrip("/") + EVENTS_PATH
        self._client = httpx.Client(timeout=timeout)

    def __call__(self, events: list[bytes], since: int | None) -> Receipt:
        try:
            response = self._client.post(self.url, json={"events": [b64(e) for e in events], "since": since})
            answer: Any = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TransportError(f"cannot reach {self.url}: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise TransportError(f"{self.url} is unavailable (HTTP {response.status_code})")
        if response.status_code != 200:
            _raise_rejection(response.status_code, answer)
        return Receipt.from_json(answer)

    def close(self) -> None:
        self._client.close()
