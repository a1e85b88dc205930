"""Reference bundles the gateway builds for itself and signs with its local publisher key.

Three models, each an ONNX graph built in the repo with its manifest beside it:

- ``news2``: NEWS2, RCP 2017 (:mod:`inference._news2`);
- ``qsofa``: qSOFA, Singer et al., JAMA 2016 (:mod:`inference._qsofa`);
- ``kdigo_aki``: KDIGO 2012 AKI stage from creatinine history (:mod:`inference._kdigo`).

Each is written to ``<models_dir>/<model id>`` and signed; the directory name is the id.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inference._bundle import MANIFEST_FILE, MODEL_FILE, sign_bundle
from inference._kdigo import build_kdigo_model, kdigo_manifest
from inference._manifest import ModelManifest
from inference._news2 import build_news2_model, news2_manifest
from inference._qsofa import build_qsofa_model, qsofa_manifest

_Reference = tuple[Callable[[], onnx.ModelProto], Callable[[], ModelManifest]]

#: model id -> (graph builder, manifest), in the order ``ensure_reference_bundles`` builds them
REFERENCE_MODELS: dict[str, _Reference] = {
    "news2": (build_news2_model, news2_manifest),
    "qsofa": (build_qsofa_model, qsofa_manifest),
    "kdigo_aki": (build_kdigo_model, kdigo_manifest),
}


def build_reference_bundle(model_id: str, out_dir: Path, signing_key: Ed25519PrivateKey) -> Path:
    """Write and sign one reference bundle into ``out_dir`` (created; replaced atomically)."""
    build_model, manifest = REFERENCE_MODELS[model_id]
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / MODEL_FILE).write_bytes(build_model().SerializeToString())
        (staging / MANIFEST_FILE).write_text(manifest().model_dump_json(indent=2) + "\n")
        sign_bundle(staging, signing_key)
        staging.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def build_news2_bundle(out_dir: Path, signing_key: Ed25519PrivateKey) -> Path:
    """Write and sign the NEWS2 bundle into ``out_dir``."""
    return build_reference_bundle("news2", out_dir, signing_key)


def build_qsofa_bundle(out_dir: Path, signing_key: Ed25519PrivateKey) -> Path:
    """Write and sign the qSOFA bundle into ``out_dir``."""
    return build_reference_bundle("qsofa", out_dir, signing_key)


def build_kdigo_bundle(out_dir: Path, signing_key: Ed25519PrivateKey) -> Path:
    """Write and sign the KDIGO AKI bundle into ``out_dir``."""
    return build_reference_bundle("kdigo_aki", out_dir, signing_key)


def ensure_reference_bundles(models_dir: Path, signing_key: Ed25519PrivateKey) -> list[Path]:
    """Build each reference bundle that is absent; return the paths it built.

    An existing bundle is never overwritten, not even a tampered one: loading it will be
    refused and recorded, which is the evidence an operator needs. A data directory made
    before a reference model existed gains it on the next start.
    """
    built: list[Path] = []
    for model_id in REFERENCE_MODELS:
        target = Path(models_dir) / model_id
        if not target.exists():
            built.append(build_reference_bundle(model_id, target, signing_key))
    return built
