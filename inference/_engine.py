"""The infer stage's model host: verify every bundle, one sandbox per model, batch scoring.

A bundle that fails verification, or whose worker cannot start, is not loaded; the reason is
kept in ``refused`` (for the audit log and the admin API) and the other models still start.
``score`` turns a list of requests into one float32 matrix and one sandbox call: the list is
the micro-batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from inference._bundle import ModelBundle, load_bundle
from inference._errors import BundleRejected, SandboxError, UnknownModel
from inference._manifest import ModelManifest
from inference._sandbox import Sandbox, SandboxLimits
from schemas import InferenceRequest, InferenceResult


def _row(outputs: dict[str, Any], i: int) -> dict[str, float]:
    """Row ``i`` of every output; an output with several values per row becomes name[j]."""
    row: dict[str, float] = {}
    for name, array in outputs.items():
        values = np.asarray(array[i]).reshape(-1)
        if values.size == 1:
            row[name] = float(values[0])
        else:
            row.update({f"{name}[{j}]": float(v) for j, v in enumerate(values)})
    return row


class InferenceEngine:
    """Loads ``models_dir/*`` bundles signed by a trusted key and hosts each in a sandbox."""

    def __init__(
        self,
        models_dir: Path,
        trusted_keys: Iterable[Ed25519PublicKey],
        limits: SandboxLimits | None = None,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.refused: dict[str, str] = {}
        self._bundles: dict[str, ModelBundle] = {}
        self._sandboxes: dict[str, Sandbox] = {}
        keys = list(trusted_keys)
        models_dir = Path(models_dir)
        entries = sorted(models_dir.iterdir()) if models_dir.is_dir() else []
        for path in entries:
            if not path.is_dir() or path.name.startswith("."):
                continue
            try:
                bundle = load_bundle(path, keys)
            except BundleRejected as exc:
                self.refused[path.name] = exc.reason
                continue
            if bundle.id in self._bundles:
                self.refused[path.name] = f"duplicate model id {bundle.id}"
                continue
            self._bundles[bundle.id] = bundle
        for model_id, bundle in list(self._bundles.items()):
            sandbox = Sandbox(bundle, self.limits)
            try:
                sandbox.start()
            except SandboxError as exc:  # one broken model must not keep the others down
                self.refused[bundle.path.name] = exc.reason
                del self._bundles[model_id]
                continue
            self._sandboxes[model_id] = sandbox

    @property
    def models(self) -> list[ModelManifest]:
        """Manifests of the loaded (verified, sandboxed) models."""
        return [b.manifest for b in self._bundles.values()]

    def manifest(self, model_id: str) -> ModelManifest:
        """The manifest of a loaded model (:class:`UnknownModel` if it is not loaded)."""
        bundle = self._bundles.get(model_id)
        if bundle is None:
            raise UnknownModel(f"model {model_id} is not loaded")
        return bundle.manifest

    def score(self, manifest_id: str, requests: list[InferenceRequest]) -> list[InferenceResult]:
        """Score all requests in one sandbox call; results are in request order.

        Raises ``ValueError`` for a request that does not fit the model (wrong id or version,
        missing or non-finite feature) and :class:`SandboxError` when the sandbox fails.
        """
        sandbox = self._sandboxes.get(manifest_id)
        if sandbox is None:
            raise UnknownModel(f"model {manifest_id} is not loaded")
        if not requests:
            return []
        manifest = sandbox.bundle.manifest
        columns = {name: j for j, name in enumerate(manifest.column_names)}
        batch = np.empty((len(requests), len(columns)), dtype=np.float32)
        for i, request in enumerate(requests):
            if (request.model_id, request.model_version) != (manifest.id, manifest.version):
                raise ValueError(f"request {i} is for another model or version")
            values = {f.name: f.value for f in request.features}
            if values.keys() != columns.keys():
                raise ValueError(f"request {i} does not fill exactly the model's inputs")
            for name, j in columns.items():
                if not math.isfinite(values[name]):
                    raise ValueError(f"request {i}: input {name} is not a finite number")
                batch[i, j] = values[name]
        outputs = sandbox.run(batch)
        return [
            InferenceResult(
                model_id=request.model_id,
                model_version=request.model_version,
                message_id=request.message_id,
                subject=request.subject,
                outputs=_row(outputs, i),
            )
            for i, request in enumerate(requests)
        ]

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model id: version, key id, provider, enforcement, restarts (refusals: .refused)."""
        return {
            model_id: {
                "version": sb.bundle.version,
                "key_id": sb.bundle.key_id,
                "provider": sb.provider,
                "enforcement": dict(sb.enforcement),
                "restarts": sb.restarts,
            }
            for model_id, sb in self._sandboxes.items()
        }

    def close(self) -> None:
        for sandbox in self._sandboxes.values():
            sandbox.close()
        self._sandboxes.clear()

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
