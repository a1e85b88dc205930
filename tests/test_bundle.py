"""Signed model bundles: what loads, and every way a bundle is refused (with its reason)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper

from inference import (
    NEWS2_COLUMNS,
    REFERENCE_MODELS,
    BundleRejected,
    ModelManifest,
    build_news2_bundle,
    build_reference_bundle,
    ensure_reference_bundles,
    key_id,
    load_bundle,
    sign_bundle,
)


@pytest.fixture(scope="module")
def publisher() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, publisher: Ed25519PrivateKey) -> Path:
    return build_news2_bundle(tmp_path_factory.mktemp("pristine") / "news2", publisher)


@pytest.fixture
def bundle_dir(tmp_path: Path, pristine: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "news2"))


def refusal(path: Path, key: Ed25519PrivateKey) -> str:
    with pytest.raises(BundleRejected) as info:
        load_bundle(path, [key.public_key()])
    return info.value.reason


def test_signed_bundle_loads_and_keeps_the_verified_bytes(
    bundle_dir: Path, publisher: Ed25519PrivateKey
) -> None:
    bundle = load_bundle(
        bundle_dir, [Ed25519PrivateKey.generate().public_key(), publisher.public_key()]
    )
    assert (bundle.id, bundle.version) == ("news2", "1.0.0")
    assert bundle.key_id == key_id(publisher.public_key())
    verified = (bundle_dir / "model.onnx").read_bytes()
    (bundle_dir / "model.onnx").write_bytes(b"swapped after verification")
    assert bundle.model_bytes == verified


def test_unsigned_bundle_is_refused(bundle_dir: Path, publisher: Ed25519PrivateKey) -> None:
    (bundle_dir / "signature.json").unlink()
    assert refusal(bundle_dir, publisher) == "unsigned"


def test_bundle_signed_by_an_untrusted_key_is_refused(bundle_dir: Path) -> None:
    assert refusal(bundle_dir, Ed25519PrivateKey.generate()) == "signed by an untrusted key"


def test_bundle_re_signed_by_an_attacker_is_refused(
    bundle_dir: Path, publisher: Ed25519PrivateKey
) -> None:
    (bundle_dir / "model.onnx").write_bytes(b"evil")
    sign_bundle(bundle_dir, Ed25519PrivateKey.generate())
    assert refusal(bundle_dir, publisher) == "signed by an untrusted key"


def test_tampered_model_is_refused(bundle_dir: Path, publisher: Ed25519PrivateKey) -> None:
    with (bundle_dir / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    assert refusal(bundle_dir, publisher) == "file model.onnx does not match its signed hash"


def test_tampered_manifest_is_refused(bundle_dir: Path, publisher: Ed25519PrivateKey) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["inputs"][0]["lookback_hours"] = 9999
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    assert refusal(bundle_dir, publisher) == "file manifest.json does not match its signed hash"


def test_edited_file_list_breaks_the_signature(
    bundle_dir: Path, publisher: Ed25519PrivateKey
) -> None:
    """Re-hashing a tampered file into signature.json does not help: the hashes are signed."""
    (bundle_dir / "model.onnx").write_bytes(b"evil")
    signature = json.loads((bundle_dir / "signature.json").read_text())
    signature["files"]["model.onnx"] = "0" * 64
    (bundle_dir / "signature.json").write_text(json.dumps(signature))
    assert refusal(bundle_dir, publisher) == "signature does not verify"


def test_extra_file_is_refused(bundle_dir: Path, publisher: Ed25519PrivateKey) -> None:
    (bundle_dir / "notes.txt").write_text("hello")
    assert refusal(bundle_dir, publisher) == "extra file notes.txt is not covered by the signature"


def test_missing_file_is_refused(bundle_dir: Path, publisher: Ed25519PrivateKey) -> None:
    (bundle_dir / "model.onnx").unlink()
    assert refusal(bundle_dir, publisher) == "missing file model.onnx"


def test_symlink_in_bundle_is_refused(bundle_dir: Path, publisher: Ed25519PrivateKey) -> None:
    (bundle_dir / "link").symlink_to(bundle_dir / "model.onnx")
    assert refusal(bundle_dir, publisher) == "extra entry link is not a regular file"


def test_onnx_that_does_not_match_the_manifest_is_refused(
    bundle_dir: Path, publisher: Ed25519PrivateKey
) -> None:
    """Correctly signed, but the graph takes 7 columns while the manifest lists 8 inputs."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["features"], ["total"], keepdims=0)],
        "wrong",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 7])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (bundle_dir / "model.onnx").write_bytes(model.SerializeToString())
    sign_bundle(bundle_dir, publisher)
    reason = refusal(bundle_dir, publisher)
    assert reason.startswith("ONNX inputs/outputs do not match the manifest")


def test_onnx_outputs_that_differ_from_the_manifest_are_refused(
    bundle_dir: Path, publisher: Ed25519PrivateKey
) -> None:
    model = onnx.load(bundle_dir / "model.onnx")
    model.graph.output.pop()
    (bundle_dir / "model.onnx").write_bytes(model.SerializeToString())
    sign_bundle(bundle_dir, publisher)
    assert refusal(bundle_dir, publisher) == (
        "ONNX inputs/outputs do not match the manifest: outputs differ"
    )


def test_invalid_manifest_is_refused_naming_the_field(
    bundle_dir: Path, publisher: Ed25519PrivateKey
) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    del manifest["advisory"]
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    sign_bundle(bundle_dir, publisher)
    assert refusal(bundle_dir, publisher) == "manifest.json is invalid at advisory"


def test_news2_manifest_codes_units_and_column_order(pristine: Path) -> None:
    manifest = ModelManifest.model_validate_json((pristine / "manifest.json").read_text())
    assert manifest.column_names == list(NEWS2_COLUMNS)
    by_name = {i.name: i for i in manifest.inputs}
    loinc = {
        name: ({c.code for c in by_name[name].codes}, by_name[name].unit)
        for name in ("respiratory_rate", "spo2", "systolic_bp", "heart_rate", "temperature")
    }
    assert loinc == {
        "respiratory_rate": ({"9279-1"}, "/min"),
        "spo2": ({"59408-5", "2708-6"}, "%"),
        "systolic_bp": ({"8480-6"}, "mm[Hg]"),
        "heart_rate": ({"8867-4"}, "/min"),
        "temperature": ({"8310-5"}, "Cel"),
    }
    assert {c.code for c in by_name["on_oxygen"].codes} == {"3151-8", "371825009"}
    acvpu = by_name["acvpu_not_alert"]
    assert [c.code for c in acvpu.codes] == ["1104441000000107"]
    assert acvpu.value_map["248234008"] == 0.0
    assert all(
        acvpu.value_map[c] == 1.0 for c in ("130987000", "300202002", "450847001", "422768004")
    )
    assert (by_name["spo2_scale2"].kind, by_name["spo2_scale2"].default) == ("config", 0.0)
    assert manifest.advisory.observation_code.code == "1104051000000101"


def test_ensure_reference_bundles_builds_once_and_never_overwrites(
    tmp_path: Path, publisher: Ed25519PrivateKey
) -> None:
    built = ensure_reference_bundles(tmp_path, publisher)
    assert built == [tmp_path / "news2", tmp_path / "qsofa", tmp_path / "kdigo_aki"]
    for path in built:
        assert load_bundle(path, [publisher.public_key()]).id == path.name
    (tmp_path / "news2" / "notes.txt").write_text("tampered")
    assert ensure_reference_bundles(tmp_path, publisher) == []
    assert (tmp_path / "news2" / "notes.txt").exists()


def test_a_data_dir_made_before_a_reference_model_existed_gains_it(
    tmp_path: Path, pristine: Path, publisher: Ed25519PrivateKey
) -> None:
    shutil.copytree(pristine, tmp_path / "news2")
    before = (tmp_path / "news2" / "signature.json").read_bytes()
    assert ensure_reference_bundles(tmp_path, publisher) == [
        tmp_path / "qsofa",
        tmp_path / "kdigo_aki",
    ]
    assert (tmp_path / "news2" / "signature.json").read_bytes() == before


@pytest.mark.parametrize("model_id", ["qsofa", "kdigo_aki"])
def test_new_reference_bundles_pass_every_load_check(
    tmp_path: Path, publisher: Ed25519PrivateKey, model_id: str
) -> None:
    """Signed, hashes match, ONNX input width and outputs match the manifest."""
    path = build_reference_bundle(model_id, tmp_path / model_id, publisher)
    bundle = load_bundle(path, [publisher.public_key()])
    assert bundle.manifest == REFERENCE_MODELS[model_id][1]()
    (path / "model.onnx").write_bytes((path / "model.onnx").read_bytes() + b"\0")
    assert refusal(path, publisher) == "file model.onnx does not match its signed hash"


def test_custom_ops_library_is_kept_only_when_signed(
    bundle_dir: Path, publisher: Ed25519PrivateKey
) -> None:
    library = b"\x7fELF not really a library"
    (bundle_dir / "custom_ops.so").write_bytes(library)
    assert refusal(bundle_dir, publisher) == (
        "extra file custom_ops.so is not covered by the signature"
    )
    sign_bundle(bundle_dir, publisher)
    assert load_bundle(bundle_dir, [publisher.public_key()]).custom_ops == library
    (bundle_dir / "custom_ops.so").write_bytes(library + b"\0")
    assert refusal(bundle_dir, publisher) == "file custom_ops.so does not match its signed hash"


def test_bundle_without_custom_ops_has_none(pristine: Path, publisher: Ed25519PrivateKey) -> None:
    assert load_bundle(pristine, [publisher.public_key()]).custom_ops is None
