"""The HTTP surface: FHIR search over advisories, message records, health and metrics.

Errors are FHIR OperationOutcomes. Advisories are stored pseudonymously; this is an
egress point, so the patient's real identifier is re-attached here, as a logical
reference by identifier. There is no create, update or delete route: advisories are
created only by the writeback stage.

``POST /deid`` runs the pipeline's de-identification on a posted HL7 v2 message or FHIR
JSON document and returns the result without storing anything (to try the engine).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from gateway._admin import admin_router
from gateway._config import DeidConfig
from gateway._deid_cli import DeidInputError, InputKind, deidentify_input
from gateway._journal import Journal
from gateway._store import Store
from schemas import PSEUDONYM_SYSTEM
from security import KeyRing, Vault
from security.audit import AuditLog
from security.deid import BUILTIN_PROFILES, Deidentifier, FreeTextMode, ProfileError

ADVISORY_TYPES = ("Observation", "RiskAssessment", "Provenance")
FHIR_JSON = "application/fhir+json"
_SEARCH_PARAMS = {"subject", "code", "_count", "_format"}
_DEID_MAX_BYTES = 1024 * 1024
_CONTENT_KINDS: dict[str, InputKind] = {
    "application/fhir+json": "fhir",
    "application/json": "fhir",
    "x-application/hl7-v2+er7": "hl7v2",
    "application/hl7-v2": "hl7v2",
    "application/hl7-v2+er7": "hl7v2",
    "text/plain": "hl7v2",
}
_FREE_TEXT_MODES: dict[str, FreeTextMode] = {
    "remove": "remove",
    "tag": "tag",
    "surrogate": "surrogate",
}


@dataclass
class ApiContext:
    """What the API reads; ``readiness`` reports whether the pipeline is up and how."""

    store: Store
    journal: Journal
    vault: Vault
    keys: KeyRing
    metrics_render: Callable[[], bytes]
    readiness: Callable[[], tuple[bool, dict[str, Any]]]
    deid: DeidConfig = field(default_factory=DeidConfig)
    timezone: str = "UTC"
    audit: AuditLog | None = None
    model_modes: Mapping[str, str] = field(default_factory=dict)

    def deidentifier(self, free_text: FreeTextMode, profile: str | None = None) -> Deidentifier:
        """The pipeline's de-identifier (same keys, date-shift range and default profile)."""
        return self.deid.deidentifier(self.keys, free_text=free_text, profile=profile)


def outcome(status: int, code: str, text: str) -> JSONResponse:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def _reidentify(value: Any, vault: Vault, cache: dict[str, dict[str, str] | None]) -> Any:
    """Replace pseudonym references with the patient's primary identifier."""
    if isinstance(value, list):
        return [_reidentify(v, vault, cache) for v in value]
    if not isinstance(value, dict):
        return value
    ident = value.get("identifier")
    if isinstance(ident, dict) and ident.get("system") == PSEUDONYM_SYSTEM:
        key = str(ident["value"])
        if key not in cache:
            found = vault.get(key)
            cache[key] = found[0] if found else None
        real = cache[key]
        return {**value, "identifier": real} if real else {"display": "unknown subject"}
    return {k: _reidentify(v, vault, cache) for k, v in value.items()}


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="wardgate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "invalid")
        return outcome(exc.status_code, code, str(exc.detail))

    if ctx.audit is not None:
        app.include_router(
            admin_router(
                ctx.store,
                ctx.audit,
                lambda: ctx.readiness()[1]["models"],
                ctx.model_modes,
                outcome,
            )
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready, detail = ctx.readiness()
        return JSONResponse({"ready": ready, **detail}, status_code=200 if ready else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(ctx.metrics_render(), media_type="text/plain; version=0.0.4")

    @app.get("/fhir/{resource_type}")
    def search(resource_type: str, request: Request) -> Response:
        if resource_type not in ADVISORY_TYPES:
            return outcome(
                404,
                "not-found",
                f"resource type {resource_type} is not served; advisory types are "
                + ", ".join(ADVISORY_TYPES),
            )
        params = request.query_params
        unknown = sorted(set(params) - _SEARCH_PARAMS)
        if unknown:
            return outcome(400, "not-supported", f"unsupported search parameter {unknown[0]}")
        subjects = None
        if "subject" in params:
            system, sep, value = params["subject"].rpartition("|")
            if not sep or not system or not value:
                return outcome(400, "invalid", "subject must be an identifier token system|value")
            # every key version's pseudonym, and those the vault links them to (ADR 5)
            subjects = ctx.vault.linked(ctx.keys.subject_pseudonyms(system, value))
        code_system, code = None, None
        if "code" in params:
            left, sep, right = params["code"].rpartition("|")
            code_system, code = (left or None, right) if sep else (None, params["code"])
        try:
            count = min(int(params.get("_count", "50")), 500)
        except ValueError:
            return outcome(400, "invalid", "_count must be an integer")
        found = ctx.store.search_advisories(resource_type, subjects, code_system, code, count)
        cache: dict[str, dict[str, str] | None] = {}
        base = str(request.base_url).rstrip("/") + "/fhir"
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {
                    "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                    "resource": _reidentify(r, ctx.vault, cache),
                    "search": {"mode": "match"},
                }
                for r in found
            ],
        }
        return JSONResponse(bundle, media_type=FHIR_JSON)

    @app.post("/deid")
    async def deid(request: Request) -> Response:
        """De-identify the body (HL7 v2 or FHIR JSON, by Content-Type); store nothing.

        ``?free_text=`` and ``?profile=`` override the configured ones; ``profile`` is a
        built-in name or the configured profile, never a file path the caller chooses.
        """
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        kind = _CONTENT_KINDS.get(content_type)
        if kind is None:
            return outcome(
                415,
                "not-supported",
                "Content-Type must be application/fhir+json, application/json, "
                "x-application/hl7-v2+er7 or text/plain (HL7 v2)",
            )
        mode = _FREE_TEXT_MODES.get(request.query_params.get("free_text", ctx.deid.free_text))
        if mode is None:
            return outcome(400, "invalid", "free_text must be remove, tag or surrogate")
        # A built-in profile or the configured one: never a path chosen by the caller.
        profile = request.query_params.get("profile", ctx.deid.profile)
        if profile not in (*BUILTIN_PROFILES, ctx.deid.profile):
            return outcome(
                400,
                "invalid",
                "profile must be " + ", ".join(BUILTIN_PROFILES) + " or the configured profile",
            )
        body = await request.body()
        if len(body) > _DEID_MAX_BYTES:
            return outcome(413, "too-costly", f"body is larger than {_DEID_MAX_BYTES} bytes")
        if not body.strip():
            return outcome(400, "invalid", "empty body: post one HL7 v2 message or FHIR JSON")
        try:
            result = await run_in_threadpool(
                lambda: deidentify_input(body, ctx.deidentifier(mode, profile), kind, ctx.timezone)
            )
        except ProfileError as exc:  # the configured file changed since start-up
            return outcome(500, "exception", str(exc))
        except DeidInputError as exc:
            return outcome(422, "processing", str(exc))
        except Exception as exc:  # its message could quote the body: name the type only
            return outcome(422, "processing", f"input not processed ({type(exc).__name__})")
        report = [e.model_dump(exclude_none=True) for e in result.report]
        return JSONResponse({"bundle": result.bundle, "report": report})

    @app.get("/records/{control_id}")
    def record(control_id: str, sender: str | None = None) -> Response:
        matches = [(i, s) for i, s in ctx.journal.lookup(control_id) if sender in (None, s)]
        if not matches:
            return outcome(404, "not-found", "no accepted message has this MSH-10")
        if len(matches) > 1:
            return outcome(
                409,
                "multiple-matches",
                "several senders used this MSH-10; add ?sender=APP^FACILITY",
            )
        message_id, from_sender = matches[0]
        disposition = ctx.store.disposition(message_id)
        stored = ctx.store.record(message_id)
        return JSONResponse(
            {
                "message_id": message_id,
                "control_id": control_id,
                "sender": from_sender,
                "status": "done" if disposition else "in_progress",
                "disposition": disposition.model_dump(mode="json") if disposition else None,
                "message_type": stored[0] if stored else None,
                "deidentified": stored[2] if stored else None,
                "advisories": ctx.store.advisories_for_message(message_id),
                "shadow_advisories": ctx.store.advisories_for_message(message_id, shadow=True),
            }
        )

    return app
