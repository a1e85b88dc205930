"""Operator controls: per-model mode (active / shadow / off) without a restart.

``PUT /admin/models/{id}/mode`` stores an override that the pipeline's infer stage reads
every batch; every change is audited. The routes sit on the loopback-bound API and have
no authentication yet (OAuth2 client credentials is later work): bind the HTTP listener
to 127.0.0.1 until then, which is the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway._config import MODEL_MODES
from gateway._store import Store
from security.audit import AuditLog

OutcomeFn = Callable[[int, str, str], JSONResponse]


def admin_router(
    store: Store,
    audit: AuditLog,
    loaded_models: Callable[[], Mapping[str, Any]],
    default_modes: Mapping[str, str],
    outcome: OutcomeFn,
) -> APIRouter:
    router = APIRouter(prefix="/admin")

    def modes() -> dict[str, str]:
        effective = {m: default_modes.get(m, "active") for m in loaded_models()}
        return {**effective, **{m: v for m, v in store.model_modes().items() if m in effective}}

    @router.get("/models")
    def list_modes() -> dict[str, str]:
        return modes()

    @router.put("/models/{model_id}/mode")
    async def set_mode(model_id: str, request: Request) -> JSONResponse:
        if model_id not in loaded_models():
            return outcome(404, "not-found", f"no loaded model is called {model_id}")
        try:
            body = await request.json()
        except ValueError:
            return outcome(400, "invalid", 'body must be JSON: {"mode": "active|shadow|off"}')
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in MODEL_MODES:
            return outcome(400, "invalid", "mode must be one of active, shadow, off")
        with store.transaction() as tx:
            tx.set_model_mode(model_id, mode)
        audit.append("admin", "model_mode", model=model_id, mode=mode)
        return JSONResponse({"model": model_id, "mode": mode})

    return router
