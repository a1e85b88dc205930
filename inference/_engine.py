"""The infer stage's model host: verify every bundle, one sandbox per model, batch scoring.

A bundle that fails verification, or whose worker cannot start, is not loaded; the reason is
kept in ``refused`` (for the audit log and the admin API) and the other models still start.
``score`` turns a list of requests into one float32 matrix and one sandbox call: the list is
the micro-batch. ``score_isolating`` does the same, but when the sandbox cannot score the
batch it bisects it (halves tried on one worker each, a single row on two) so that only the
rows that make workers fail come back as :class:`RowFailure`; the rest are scored.
``score_models`` does that for several models, their workers scoring side by side.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from inference._bundle import ModelBundle, load_bundle
from inference._errors import BundleRejected, SandboxError, UnknownModel, WorkerUnavailable
from inference._manifest import ModelManifest
from inference._sandbox import Outputs, Pending, Sandbox, SandboxLimits
from schemas import InferenceRequest, InferenceResult


def _rows(outputs: dict[str, npt.NDArray[Any]], n: int) -> list[dict[str, float]]:
    """Each of the ``n`` rows' outputs as floats; an output with several values per row
    becomes ``name[j]`` (one float64 table, then one dict per row: no per-value numpy)."""
    arrays = list(outputs.values())
    if all(a.ndim == 1 for a in arrays):  # the usual case: one value per row and output
        keys = list(outputs)
        table = np.array(arrays, dtype=np.float64).reshape(len(arrays), n).T
    else:
        keys = []
        columns = [a.reshape(n, -1) for a in arrays]
        for name, column in zip(outputs, columns, strict=True):
            width = column.shape[1]
            keys += [name] if width == 1 else [f"{name}[{j}]" for j in range(width)]
        table = np.concatenate(columns, axis=1, dtype=np.float64)
    return [dict(zip(keys, row, strict=True)) for row in table.tolist()]


@dataclass(frozen=True)
class RowFailure:
    """A request the sandbox could not score even alone, and why (the dead-letter reason)."""

    request: InferenceRequest
    reason: str


_RESULT_FIELDS = tuple(InferenceResult.model_fields)
_NAME, _VALUE = attrgetter("name"), attrgetter("value")


def _result(request: InferenceRequest, outputs: dict[str, float]) -> InferenceResult:
    """The result for a validated request and its float outputs, built without validation.

    What ``model_construct`` does for this model, less its generic per-field loop: 0.8 µs
    a result against 2.0 validated and 2.3 through ``model_construct`` (9 outputs). Every
    value here is already typed; ``tests/test_sandbox.py`` checks the two are equal.
    """
    result = InferenceResult.__new__(InferenceResult)
    fields = {
        "model_id": request.model_id,
        "model_version": request.model_version,
        "message_id": request.message_id,
        "subject": request.subject,
        "outputs": outputs,
    }
    object.__setattr__(result, "__dict__", fields)
    object.__setattr__(result, "__pydantic_fields_set__", set(_RESULT_FIELDS))
    object.__setattr__(result, "__pydantic_extra__", None)
    object.__setattr__(result, "__pydantic_private__", None)
    return result


class _Bisection:
    """Score rows; when a slice fails, split it in halves until the failing rows stand alone.

    The whole batch and single rows get two workers each (a transient crash is retried, and
    a row is blamed only after it failed twice on its own); halves get one. Failed calls are
    budgeted (enough for a few poison rows): a model that fails on every row must not hold
    the stage for ``O(rows)`` timeouts, so once the budget is spent the rows not yet scored
    fail with the last reason.
    """

    def __init__(self, sandbox: Sandbox, batch: npt.NDArray[np.float32]) -> None:
        self.sandbox = sandbox
        self.batch = batch
        self.scored: dict[int, dict[str, float]] = {}
        self.failed: dict[int, str] = {}
        self.budget = 3 * (math.ceil(math.log2(len(batch))) + 3) if len(batch) else 0

    def run(self, first: Pending[Outputs] | None = None) -> None:
        """Score every row; ``first``: the whole batch, already sent to the sandbox."""
        try:
            if first is None:
                self._slice(0, len(self.batch), 2)
            else:
                self._settle(0, len(self.batch), first)
        except SandboxError as exc:  # no worker can start, or the budget is spent
            rest = range(len(self.batch))
            self.failed.update({i: exc.reason for i in rest if i not in self.scored})

    def _slice(self, lo: int, hi: int, attempts: int) -> None:
        self._settle(lo, hi, self.sandbox.submit(self.batch[lo:hi], attempts, overlap=False))

    def _settle(self, lo: int, hi: int, call: Pending[Outputs]) -> None:
        try:
            outputs = call.result()
        except WorkerUnavailable:
            raise
        except SandboxError as exc:
            self.budget -= 1
            if hi - lo == 1:
                self.failed[lo] = exc.reason
                return
            if self.budget <= 0:
                raise SandboxError(f"{exc.reason}; stopped isolating rows") from None
            mid = (lo + hi) // 2
            for a, b in ((lo, mid), (mid, hi)):
                self._slice(a, b, 2 if b - a == 1 else 1)
            return
        for i, row in enumerate(_rows(outputs, hi - lo)):
            self.scored[lo + i] = row


def _finite(rows: list[list[float]], names: list[str]) -> npt.NDArray[np.float64]:
    """``rows`` as a float64 table; ``ValueError`` naming the first value that is not finite."""
    table = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
    if not np.isfinite(table).all():
        i, j = np.argwhere(~np.isfinite(table))[0]
        raise ValueError(f"request {i}: input {names[j]} is not a finite number")
    return table


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
        sandbox = self._sandbox(manifest_id)
        if not requests:
            return []
        outputs = sandbox.run(self._matrix(sandbox, requests))
        rows = _rows(outputs, len(requests))
        return [_result(request, row) for request, row in zip(requests, rows, strict=True)]

    def score_isolating(
        self, manifest_id: str, requests: list[InferenceRequest]
    ) -> list[InferenceResult | RowFailure]:
        """Like :meth:`score`, but a batch the sandbox cannot score is bisected.

        Returns, in request order, each request's result or its :class:`RowFailure` (the
        request failed alone; the reason is the sandbox's). A request that keeps killing
        workers costs about ``log2(len(requests)) + 3`` failed calls; the other requests are
        scored. When no worker can be started at all, or the failures exceed what a few
        poison rows would cause, the requests not yet scored fail with the reason.
        ``ValueError`` as for :meth:`score`.
        """
        return self.score_models({manifest_id: requests})[manifest_id]

    def score_models(
        self, batches: Mapping[str, list[InferenceRequest]]
    ) -> dict[str, list[InferenceResult | RowFailure]]:
        """:meth:`score_isolating` for several models at once.

        Every model's batch is sent before any reply is read, so the models' workers score
        side by side, on whatever CPUs are free, instead of one after another. ``ValueError``
        (a request that does not fit its model) comes before anything is sent.
        """
        sandboxes = {m: self._sandbox(m) for m in batches}
        matrices = {m: self._matrix(sandboxes[m], reqs) for m, reqs in batches.items() if reqs}
        side_by_side = len(matrices) > 1  # one model: its worker is better on the caller's CPU
        sent = {m: sandboxes[m].submit(x, overlap=side_by_side) for m, x in matrices.items()}
        scored: dict[str, list[InferenceResult | RowFailure]] = {}
        for model_id, requests in batches.items():
            if model_id not in sent:
                scored[model_id] = []
                continue
            bisection = _Bisection(sandboxes[model_id], matrices[model_id])
            bisection.run(first=sent[model_id])
            ok, failed = bisection.scored, bisection.failed
            scored[model_id] = [
                _result(r, ok[i]) if i in ok else RowFailure(r, failed[i])
                for i, r in enumerate(requests)
            ]
        return scored

    def _sandbox(self, manifest_id: str) -> Sandbox:
        sandbox = self._sandboxes.get(manifest_id)
        if sandbox is None:
            raise UnknownModel(f"model {manifest_id} is not loaded")
        return sandbox

    @staticmethod
    def _matrix(sandbox: Sandbox, requests: list[InferenceRequest]) -> npt.NDArray[np.float32]:
        """The float32 batch, one row per request (``ValueError`` for a row that does not fit:
        the first such row, and in it the first fault, as a row-by-row check would find)."""
        manifest = sandbox.bundle.manifest
        model = (manifest.id, manifest.version)
        names = manifest.column_names
        wanted = set(names)
        rows: list[list[float]] = []
        for i, request in enumerate(requests):
            fault = ""
            features = request.features
            if (request.model_id, request.model_version) != model:
                fault = "is for another model or version"
            elif list(map(_NAME, features)) == names:  # the extractor's order
                rows.append(list(map(_VALUE, features)))
            else:
                by_name = {f.name: f.value for f in features}
                if by_name.keys() == wanted:
                    rows.append([by_name[name] for name in names])
                else:
                    fault = "does not fill exactly the model's inputs"
            if fault:
                _finite(rows, names)  # a non-finite value in an earlier row comes first
                raise ValueError(f"request {i} {fault}")
        return _finite(rows, names).astype(np.float32)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model id: version, key id, provider, enforcement, restarts, worker failures and
        the last failure's reason (refusals: ``.refused``)."""
        return {
            model_id: {
                "version": sb.bundle.version,
                "key_id": sb.bundle.key_id,
                "provider": sb.provider,
                "enforcement": dict(sb.enforcement),
                "restarts": sb.restarts,
                "worker_failures": sb.failures,
                "last_failure": sb.last_failure,
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
