"""``wardgate keys status|rotate``: which key versions a gateway holds, and rotating them.

The design is ADR 5. ``rotate`` runs only while no gateway has the vault open (the vault
lock says so) and either finishes a rotation that was interrupted or provisioned from
outside, or starts the next one: it writes the next key version under
``<data-dir>/keys`` if the current one was generated there, and refuses, saying which
secret to provision, if it came from the environment or a configured file. Every
rotation is recorded in its own audit chain, ``audit/keys.log``, which
``wardgate audit verify`` checks with the others. No key material is ever printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from gateway._config import Settings, load_settings
from security import (
    KeyRing,
    VaultCounts,
    VaultError,
    VaultRekeyer,
    VersionedKey,
    inspect_vault,
    load_keyring,
    next_version,
    scan_keys,
    version_number,
    write_key,
)
from security.audit import AuditError, AuditLog

app = typer.Typer(no_args_is_help=True, help="Key versions: where each comes from; rotation.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML configuration file")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="where state and keys live")]
ROTATABLE = ("vault", "pseudonym")
_NOT_ROTATED = {
    "dateshift": "the date-shift key rotates with the pseudonym key (--key pseudonym): a "
    "patient's offset must stay the same for all data under one pseudonym",
    "journal": "journal key rotation is not supported yet (the journal would have to be "
    "re-sealed); see docs/adr/0005-key-rotation.md",
    "audit": "audit signing keys are not rotated: `wardgate audit verify` checks every "
    "chain with the one key",
    "publisher": "the local publisher key is not rotated: bundles built with it would "
    "stop verifying",
}
AfterBatch = Callable[[int], None] | None


class RotationRefused(Exception):
    """Rotation cannot start; the message says why and what the operator does next."""


@dataclass(frozen=True)
class Rotated:
    """What one ``rotate`` did: the version now current and the rows it touched."""

    key: str
    version: str
    rows: int
    generated: bool


def _vault_path(settings: Settings) -> Path:
    path = settings.data_dir / "vault.db"
    if not path.exists():
        raise RotationRefused(
            f"no vault under {settings.data_dir}: nothing to rotate (is --data-dir right?)"
        )
    return path


def _generated_here(keys: VersionedKey, version: str, provision: str) -> None:
    """Refuse to write the next version of a key the operator provides."""
    source = keys.sources[version]
    if source.origin != "data":
        raise RotationRefused(
            f"{keys.name} key {version} comes from {source}: wardgate writes only keys it "
            f"generated itself. Provision {provision} beside the current secret, then run "
            "this again to finish the rotation under it"
        )


@contextmanager
def _audited(
    settings: Settings, keys: KeyRing, key: str, version: str, generated: bool
) -> Iterator[AuditLog]:
    """Record the rotation in ``audit/keys.log``: started (durably, before any change),
    then whatever the body appends, or its failure."""
    audit_dir = settings.data_dir / "audit"
    audit_dir.mkdir(exist_ok=True, mode=0o700)
    try:
        audit = AuditLog(audit_dir / "keys.log", keys.audit, sync_interval=0)
    except AuditError as exc:
        raise RotationRefused(f"cannot record the rotation in audit/keys.log: {exc}") from None
    with audit:
        audit.append("keys", "rotation_started", key=key, version=version, generated=generated)
        audit.sync()
        try:
            yield audit
        except BaseException as exc:
            audit.append(
                "keys", "rotation_failed", key=key, version=version, error=type(exc).__name__
            )
            raise


def rotate_vault(
    settings: Settings, *, batch: int = 500, after_batch: AfterBatch = None
) -> Rotated:
    """Re-seal every vault row under the newest vault key, writing a new one if none is due.

    A rotation is due (not started anew) while rows sealed by an older key remain: after
    a crash, or once the operator has provisioned a newer version as a secret.
    """
    path = _vault_path(settings)
    keys = load_keyring(settings.data_dir, settings.key_files)
    with VaultRekeyer(path, keys.vault) as vault:
        generated = vault.stale_rows() == 0
        version = keys.vault.current
        if generated:
            version = next_version(version)
            _generated_here(keys.vault, keys.vault.current, _env_name("vault", version))
        with _audited(settings, keys, "vault", version, generated) as audit:
            if generated:
                write_key(settings.data_dir, "vault", version)
                keys = load_keyring(settings.data_dir, settings.key_files)
            rows = vault.rekey(keys.vault, batch=batch, after_batch=after_batch)
            audit.append("keys", "rotated", key="vault", version=version, rows=rows)
    return Rotated("vault", version, rows, generated)


def rotate_pseudonym(
    settings: Settings, *, batch: int = 500, after_batch: AfterBatch = None
) -> Rotated:
    """Give every known identity a pseudonym of the newest version, linked to its old ones.

    A new version means a new pseudonym key and a new date-shift key (ADR 5). Old rows
    stay, so data stored under old pseudonyms keeps re-identifying.
    """
    from security.deid import pseudonym

    path = _vault_path(settings)
    keys = load_keyring(settings.data_dir, settings.key_files)
    with VaultRekeyer(path, keys.vault) as vault:
        version, linked = keys.pseudonym_version, vault.linked_version()
        if version_number(linked) > version_number(version):
            raise RotationRefused(
                f"the vault is linked to pseudonym version {linked}, but the newest "
                f"pseudonym key loaded is {version}: provide version {linked} again"
            )
        generated = linked == version
        if generated:
            version = next_version(version)
            both = f"{_env_name('pseudonym', version)} and {_env_name('dateshift', version)}"
            _generated_here(keys.pseudonym_keys, keys.pseudonym_version, both)
            _generated_here(keys.dateshift_keys, keys.pseudonym_version, both)
        with _audited(settings, keys, "pseudonym", version, generated) as audit:
            if generated:
                # date-shift first: a pseudonym version without its date-shift key won't load
                write_key(settings.data_dir, "dateshift", version)
                write_key(settings.data_dir, "pseudonym", version)
                keys = load_keyring(settings.data_dir, settings.key_files)
            secret = keys.pseudonym

            def derive(system: str, value: str) -> str:
                return pseudonym(secret, version, system, value)

            rows = vault.link_pseudonyms(version, derive, batch=batch, after_batch=after_batch)
            audit.append("keys", "rotated", key="pseudonym", version=version, rows=rows)
    return Rotated("pseudonym", version, rows, generated)


def _env_name(name: str, version: str) -> str:
    return f"WARDGATE_KEY_{name.upper()}_V{version_number(version)} (or key_files.{name}_{version})"


@app.command()
def rotate(
    key: Annotated[str, typer.Option("--key", help="vault | pseudonym")],
    batch: Annotated[int, typer.Option(min=1, help="rows per transaction")] = 500,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Rotate a key, or finish an interrupted rotation. Stop the gateway first."""
    if key not in ROTATABLE:
        reason = _NOT_ROTATED.get(key, f"unknown key {key!r}")
        typer.echo(f"not rotated: {reason}; rotatable: {', '.join(ROTATABLE)}", err=True)
        raise typer.Exit(2)
    settings = load_settings(config, data_dir=data_dir)
    rotation = rotate_vault if key == "vault" else rotate_pseudonym
    try:
        done = rotation(settings, batch=batch)
    except (RotationRefused, VaultError, ValueError, OSError) as exc:
        typer.echo(f"not rotated: {exc}", err=True)
        raise typer.Exit(1) from None
    what = "re-sealed" if key == "vault" else "linked to their new pseudonyms"
    started = "new version written" if done.generated else "finished an earlier rotation"
    typer.echo(f"{key}: {done.version} is current ({started}); {done.rows} rows {what}")
    if key == "vault":
        typer.echo("`wardgate keys status` shows the versions no row uses any more")


def _vault_use(keys: VersionedKey, version: str, counts: VaultCounts, notes: list[str]) -> str:
    rows = counts.by_key_id.get(keys.key_id(version), 0)
    use = f"id {keys.key_id(version)}, {rows} rows"
    if version == keys.current:
        return use
    if rows:
        notes.append(f"vault: {rows} rows still under {version}: `keys rotate --key vault`")
        return use
    return use + " (no row uses it: remove once older backups have expired)"


def _vault_notes(keys: VersionedKey | None, counts: VaultCounts) -> list[str]:
    known = {keys.key_id(v) for v in keys.secrets} if keys else set()
    notes = [
        f"vault: {rows} rows sealed by key id {kid}, which no loaded key matches"
        for kid, rows in counts.by_key_id.items()
        if kid is not None and kid not in known
    ]
    if counts.by_key_id.get(None):
        notes.append(
            f"vault: {counts.by_key_id[None]} rows from before key versions "
            "(opened with any vault key; the next rotation labels them)"
        )
    return notes


def _pseudonym_notes(keys: VersionedKey | None, counts: VaultCounts) -> list[str]:
    if keys is None:
        return []
    older = sum(n for v, n in counts.by_pseudonym_version.items() if v != keys.current)
    if not older or (counts.linked_to or "v1") == keys.current:
        return []
    return [
        f"pseudonym: {older} identities under older versions are not linked to "
        f"{keys.current} yet: `wardgate keys rotate --key pseudonym` finishes it"
    ]


@app.command()
def status(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """List each key's versions, where each comes from, and the vault rows each serves.

    Reads keys (to name them by fingerprint) but generates none, and reads the vault
    without its lock, so it works beside a running gateway.
    """
    settings = load_settings(config, data_dir=data_dir)
    try:
        found = scan_keys(settings.data_dir, settings.key_files)
    except (ValueError, OSError) as exc:
        typer.echo(f"keys cannot be read: {exc}", err=True)
        raise typer.Exit(1) from None
    if not found:
        typer.echo(f"no keys for {settings.data_dir} yet: the gateway generates them on start")
        return
    counts = inspect_vault(settings.data_dir / "vault.db")
    notes: list[str] = []
    for name, keys in sorted(found.items()):
        for version in sorted(keys.secrets, key=version_number):
            mark = "*" if version == keys.current else " "
            use = ""
            if name == "vault":
                use = _vault_use(keys, version, counts, notes)
            elif name == "pseudonym":
                use = f"{counts.by_pseudonym_version.get(version, 0)} identities"
            typer.echo(f"{name:<10} {version:<4}{mark} {keys.sources[version]!s:<34} {use}")
    notes += _vault_notes(found.get("vault"), counts)
    notes += _pseudonym_notes(found.get("pseudonym"), counts)
    for note in notes:
        typer.echo(note)
