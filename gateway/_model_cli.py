"""``wardgate model sign|verify|inspect``: how a model publisher and a hospital handle bundles.

Keys are files holding a base64 raw 32-byte Ed25519 key (the format of the gateway's
own key files): a publisher signs with its private key; a gateway trusts the public
keys in ``inference.trusted_keys`` and its own local publisher key.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gateway._config import load_settings

app = typer.Typer(no_args_is_help=True, help="Sign, verify and inspect model bundles.")

BundleArg = Annotated[Path, typer.Argument(help="bundle directory (model.onnx + manifest.json)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML configuration file")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="the gateway's data dir")]


def _raw_key(path: Path) -> bytes:
    raw = base64.b64decode(path.read_bytes().strip())
    if len(raw) != 32:
        raise typer.BadParameter(f"{path}: expected a base64 raw 32-byte Ed25519 key")
    return raw


def _trusted(
    config: Path | None, data_dir: Path | None, extra: list[Path]
) -> list[Ed25519PublicKey]:
    """The keys a gateway with this config and data dir would trust, plus ``--trust`` files."""
    from security import load_keyring

    settings = load_settings(config, data_dir=data_dir)
    keys = [
        Ed25519PublicKey.from_public_bytes(base64.b64decode(k))
        for k in settings.inference.trusted_keys
    ]
    if (settings.data_dir / "keys").exists():
        keys.append(load_keyring(settings.data_dir, settings.key_files).publisher.public_key())
    keys += [Ed25519PublicKey.from_public_bytes(_raw_key(p)) for p in extra]
    return keys


@app.command()
def sign(
    bundle: BundleArg,
    key: Annotated[Path, typer.Option("--key", help="file with the publisher's private key")],
) -> None:
    """Sign every file of a bundle (writes signature.json)."""
    from inference import key_id, sign_bundle

    private = Ed25519PrivateKey.from_private_bytes(_raw_key(key))
    sign_bundle(bundle, private)
    typer.echo(f"signed {bundle} with {key_id(private.public_key())}")


@app.command()
def verify(
    bundle: BundleArg,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    trust: Annotated[list[Path] | None, typer.Option("--trust", help="public key file")] = None,
) -> None:
    """Exit 0 if the gateway would load this bundle; otherwise say why and exit 1."""
    from inference import BundleRejected, load_bundle

    try:
        loaded = load_bundle(bundle, _trusted(config, data_dir, trust or []))
    except BundleRejected as exc:
        typer.echo(f"refused: {exc.reason}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"ok: {loaded.id} {loaded.version}, signed by {loaded.key_id}")


@app.command()
def inspect(bundle: BundleArg) -> None:
    """Print a bundle's inputs, outputs, codes, units, windows and provider support."""
    import onnxruntime

    from inference import ModelManifest
    from inference._worker import gpu_visible

    manifest = ModelManifest.model_validate_json((bundle / "manifest.json").read_bytes())
    typer.echo(f"{manifest.id} {manifest.version}: {manifest.description}")
    if manifest.reference:
        typer.echo(f"reference: {manifest.reference}")
    typer.echo("inputs:")
    for item in manifest.inputs:
        codes = ", ".join(
            f"{c.system}|{c.code}" + (f" [{c.unit}]" if c.unit else "") for c in item.codes
        )
        window = f"{item.lookback_hours:g} h" if item.lookback_hours else "-"
        typer.echo(
            f"  {item.name} ({item.kind}, unit {item.unit or '-'}, window {window})"
            + (f": {codes}" if codes else "")
        )
        shown = {"name", "kind", "unit", "lookback_hours", "codes", "description"}
        extra = item.model_dump(mode="json", exclude_defaults=True, exclude=shown)
        for key, value in extra.items():
            typer.echo(f"      {key}: {value}")
    typer.echo(f"outputs: {', '.join(manifest.outputs)}")
    advisory = manifest.advisory
    typer.echo(
        f"advisory: {advisory.kind}; score {advisory.score_output}, band "
        f"{advisory.band_output} {dict(advisory.band_labels)}; observation code "
        f"{advisory.observation_code.system}|{advisory.observation_code.code}"
    )
    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        where = " (no CUDA: runs on CPU)"
    else:
        where = "" if gpu_visible() else " (CUDA, but no GPU visible: runs on CPU)"
    typer.echo("providers here: " + ", ".join(available) + where)
