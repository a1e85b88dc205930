"""Signed model bundles: a directory with ``model.onnx``, ``manifest.json``, ``signature.json``.

A bundle may also ship ``custom_ops.so``, an onnxruntime custom-op library. It is signed like
every other file, and only the sandboxed worker ever loads it (from a sealed in-memory copy,
after the worker's limits are in place): see :mod:`inference._worker`.

``signature.json`` carries an Ed25519 signature over a canonical JSON document listing the
SHA-256 of the manifest and of every file in the bundle. Loading reads every file exactly
once, checks it against the signed hashes with a key from the caller's trust list, and
keeps the verified bytes in memory: nothing re-reads the directory after verification, so
a file swapped on disk later cannot reach the sandbox.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from inference._errors import BundleRejected
from inference._manifest import ModelManifest

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature.json"
CUSTOM_OPS_FILE = "custom_ops.so"
SIGNATURE_FORMAT = "wardgate-bundle-signature/1"
_REQUIRED = frozenset({MODEL_FILE, MANIFEST_FILE})


def key_id(public_key: Ed25519PublicKey) -> str:
    """Fingerprint of a public key: ``ed25519:`` + SHA-256 of its 32 raw bytes (hex)."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _signed_document(kid: str, files: Mapping[str, str]) -> dict[str, Any]:
    return {
        "format": SIGNATURE_FORMAT,
        "key_id": kid,
        "manifest_sha256": files[MANIFEST_FILE],
        "files": dict(sorted(files.items())),
    }


@dataclass(frozen=True)
class ModelBundle:
    """A verified bundle. ``model_bytes`` (and ``custom_ops``, the bytes of an optional
    ``custom_ops.so``) are the bytes whose hashes were checked."""

    path: Path
    manifest: ModelManifest
    model_bytes: bytes = field(repr=False)
    key_id: str
    file_sha256: Mapping[str, str]
    custom_ops: bytes | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def version(self) -> str:
        return self.manifest.version


def _read_dir(bundle_dir: Path) -> dict[str, bytes]:
    """Every regular file of the bundle, read once. Anything else is refused."""
    contents: dict[str, bytes] = {}
    try:
        entries = sorted(os.scandir(bundle_dir), key=lambda e: e.name)
    except OSError as exc:
        raise BundleRejected(f"bundle directory cannot be read ({exc.strerror})") from None
    for entry in entries:
        if entry.is_symlink() or not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
            raise BundleRejected(f"extra entry {entry.name} is not a regular file")
        with open(entry.path, "rb") as fh:
            contents[entry.name] = fh.read()
    return contents


def sign_bundle(bundle_dir: Path, private_key: Ed25519PrivateKey) -> Path:
    """Hash every file in ``bundle_dir`` (but the signature) and write ``signature.json``."""
    bundle_dir = Path(bundle_dir)
    contents = _read_dir(bundle_dir)
    contents.pop(SIGNATURE_FILE, None)
    missing = _REQUIRED - contents.keys()
    if missing:
        raise ValueError(f"cannot sign: missing {', '.join(sorted(missing))}")
    files = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    public = private_key.public_key()
    kid = key_id(public)
    doc = _signed_document(kid, files)
    signature = private_key.sign(_canonical(doc))
    raw_public = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    out = {
        **doc,
        "public_key": base64.b64encode(raw_public).decode(),
        "signature": base64.b64encode(signature).decode(),
    }
    path = bundle_dir / SIGNATURE_FILE
    tmp = path.with_name(SIGNATURE_FILE + ".tmp")
    tmp.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _parse_signature(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    try:
        doc = json.loads(raw)
        kid = doc["key_id"]
        files = doc["files"]
        signature = base64.b64decode(doc["signature"], validate=True)
        ok = (
            doc.get("format") == SIGNATURE_FORMAT
            and isinstance(kid, str)
            and isinstance(files, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
            and doc.get("manifest_sha256") == files.get(MANIFEST_FILE)
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        ok = False
    if not ok:
        raise BundleRejected("signature.json is malformed")
    return kid, files, signature


def _check_onnx(manifest: ModelManifest, model_bytes: bytes) -> None:
    mismatch = "ONNX inputs/outputs do not match the manifest"
    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception:  # onnx raises several unrelated types for a corrupt protobuf
        raise BundleRejected("model.onnx is not a valid ONNX model") from None
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or inputs[0].name != manifest.onnx_input:
        raise BundleRejected(f"{mismatch}: expected one input {manifest.onnx_input}")
    tensor = inputs[0].type.tensor_type
    dims = tensor.shape.dim
    width = dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None
    if tensor.elem_type != onnx.TensorProto.FLOAT or width != len(manifest.inputs):
        raise BundleRejected(
            f"{mismatch}: input must be float32 [N, {len(manifest.inputs)}] (one column per input)"
        )
    outputs = [o.name for o in graph.output]
    if sorted(outputs) != sorted(manifest.outputs):
        raise BundleRejected(f"{mismatch}: outputs differ")


def load_bundle(bundle_dir: Path, trusted_public_keys: Iterable[Ed25519PublicKey]) -> ModelBundle:
    """Verify and load a bundle, or raise :class:`BundleRejected` saying which check failed."""
    bundle_dir = Path(bundle_dir)
    trusted = {key_id(k): k for k in trusted_public_keys}
    contents = _read_dir(bundle_dir)
    raw_signature = contents.pop(SIGNATURE_FILE, None)
    if raw_signature is None:
        raise BundleRejected("unsigned")
    kid, files, signature = _parse_signature(raw_signature)
    public = trusted.get(kid)
    if public is None:
        raise BundleRejected("signed by an untrusted key")
    try:
        public.verify(signature, _canonical(_signed_document(kid, files)))
    except InvalidSignature:
        raise BundleRejected("signature does not verify") from None
    extra = sorted(contents.keys() - files.keys())
    if extra:
        raise BundleRejected(f"extra file {extra[0]} is not covered by the signature")
    missing = sorted((files.keys() | _REQUIRED) - contents.keys())
    if missing:
        raise BundleRejected(f"missing file {missing[0]}")
    for name, data in contents.items():
        if hashlib.sha256(data).hexdigest() != files[name]:
            raise BundleRejected(f"file {name} does not match its signed hash")
    try:
        manifest = ModelManifest.model_validate_json(contents[MANIFEST_FILE])
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        raise BundleRejected(f"manifest.json is invalid at {', '.join(fields)}") from None
    _check_onnx(manifest, contents[MODEL_FILE])
    return ModelBundle(
        path=bundle_dir,
        manifest=manifest,
        model_bytes=contents[MODEL_FILE],
        key_id=kid,
        file_sha256=dict(files),
        custom_ops=contents.get(CUSTOM_OPS_FILE),
    )
