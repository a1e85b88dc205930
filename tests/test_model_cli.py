"""`wardgate model sign|verify|inspect`, as a model publisher and a hospital would use them."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from gateway._cli import app
from inference import build_news2_bundle

runner = CliRunner()


def _key_files(tmp_path: Path, name: str) -> tuple[Path, Path]:
    private = Ed25519PrivateKey.generate()
    priv_file, pub_file = tmp_path / f"{name}.key", tmp_path / f"{name}.pub"
    priv_file.write_bytes(base64.b64encode(private.private_bytes_raw()))
    pub_file.write_bytes(
        base64.b64encode(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    )
    return priv_file, pub_file


def _bundle(tmp_path: Path) -> Path:
    return build_news2_bundle(tmp_path / "news2", Ed25519PrivateKey.generate())


def _verify(bundle: Path, tmp_path: Path, *trust: Path) -> tuple[int, str]:
    args = ["model", "verify", str(bundle), "--data-dir", str(tmp_path / "no-gateway-here")]
    for pub in trust:
        args += ["--trust", str(pub)]
    result = runner.invoke(app, args)
    return result.exit_code, result.output


def test_a_bundle_signed_by_a_trusted_publisher_verifies(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    priv, pub = _key_files(tmp_path, "vendor")
    assert runner.invoke(app, ["model", "sign", str(bundle), "--key", str(priv)]).exit_code == 0
    code, output = _verify(bundle, tmp_path, pub)
    assert code == 0 and "ok: news2" in output


def test_a_bundle_from_an_untrusted_publisher_is_refused_with_the_reason(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    _, other_pub = _key_files(tmp_path, "other")
    code, output = _verify(bundle, tmp_path, other_pub)
    assert code == 1 and "refused" in output and "untrusted" in output


def test_a_tampered_bundle_is_refused_naming_the_file(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    priv, pub = _key_files(tmp_path, "vendor")
    runner.invoke(app, ["model", "sign", str(bundle), "--key", str(priv)])
    manifest = bundle / "manifest.json"
    manifest.write_text(manifest.read_text().replace("NEWS2", "NEWS3", 1))
    code, output = _verify(bundle, tmp_path, pub)
    assert code == 1 and "manifest.json" in output


def test_inspect_shows_inputs_codes_units_windows_and_providers(tmp_path: Path) -> None:
    result = runner.invoke(app, ["model", "inspect", str(_bundle(tmp_path))])
    assert result.exit_code == 0
    out = result.output
    assert "respiratory_rate (quantity, unit /min, window 24 h)" in out
    assert "http://loinc.org|9279-1" in out
    assert "1104441000000107" in out and "CPUExecutionProvider" in out
