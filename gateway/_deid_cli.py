"""``wardgate deid FILE|-``: de-identify one HL7 v2 message, FHIR JSON document or DICOM file.

The same code the pipeline runs (``to_fhir`` then the ``Deidentifier`` that
``DeidConfig.deidentifier`` builds, with the profile from config or ``--profile``), with
the keys from ``--data-dir`` like the gateway, so security officers and integration
engineers can try the engine on their own samples. Nothing is stored: the vault is not written.

``deidentify_input`` is shared with ``POST /deid``. Its errors (``DeidInputError``) say
what was wrong with the input and never quote it. A DICOM Part 10 file (``DICM`` after
the 128-byte preamble) goes through ``security.deid.dicom`` instead, with the same
pseudonym and date-shift keys, and is written to ``--out``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from gateway._config import Settings, load_settings
from gateway.normalize import HANDLED_TYPES, NormalizationError, UnsupportedMessageType, to_fhir
from security.deid import (
    DeidentificationError,
    Deidentifier,
    DeidResult,
    FreeTextMode,
    ProfileError,
)

InputKind = Literal["hl7v2", "fhir"]
DicomDates = Literal["remove", "shift"]
MAX_INPUT_BYTES = 4 * 1024 * 1024


class DeidInputError(ValueError):
    """The input cannot be de-identified; the message names the problem, never a value."""


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: a 128-byte preamble, then ``DICM``."""
    return data[128:132] == b"DICM"


def sniff(data: bytes) -> InputKind:
    """HL7 v2 if it starts with MSH (after a BOM, MLLP start byte or blank lines), FHIR
    JSON if it starts with ``{``."""
    head = data[:16].lstrip(b"\xef\xbb\xbf\x0b \t\r\n")
    if head.startswith(b"MSH"):
        return "hl7v2"
    if head.startswith(b"{"):
        return "fhir"
    raise DeidInputError(
        "input is neither HL7 v2 (a message starting with MSH) nor FHIR JSON (an object)"
    )


def _fhir_json(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except UnicodeDecodeError:
        raise DeidInputError("FHIR JSON must be UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DeidInputError(
            f"input is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise DeidInputError("FHIR JSON must be a resource: an object with resourceType")
    return doc  # a Bundle or one resource: the engine takes either


def deidentify_input(
    data: bytes, deid: Deidentifier, kind: InputKind | None = None, timezone: str = "UTC"
) -> DeidResult:
    """HL7 v2 or FHIR JSON bytes -> the de-identified Bundle and its report."""
    if len(data) > MAX_INPUT_BYTES:
        raise DeidInputError(f"input is larger than {MAX_INPUT_BYTES} bytes")
    kind = kind or sniff(data)
    try:
        doc = to_fhir(data, timezone=timezone) if kind == "hl7v2" else _fhir_json(data)
        return deid.deidentify(doc)
    except UnsupportedMessageType:
        handled = ", ".join(sorted(HANDLED_TYPES))
        raise DeidInputError(f"MSH-9 message type is not handled; handled: {handled}") from None
    except (NormalizationError, DeidentificationError) as exc:
        raise DeidInputError(str(exc)) from None  # these messages never carry field values


def deidentifier(
    settings: Settings, free_text: FreeTextMode | None = None, profile: str | None = None
) -> Deidentifier:
    """The pipeline's de-identifier for these settings (keys generated if absent)."""
    from security import load_keyring

    keys = load_keyring(settings.data_dir, settings.key_files)
    return settings.deid.deidentifier(keys, free_text=free_text, profile=profile)


def deid(
    file: Annotated[str, typer.Argument(metavar="FILE|-", help="HL7 v2 or FHIR JSON; - = stdin")],
    report: Annotated[
        bool, typer.Option("--report", help="also print the report (JSON) on stderr")
    ] = False,
    free_text: Annotated[
        str | None,
        typer.Option(
            "--free-text",
            help="remove | tag | surrogate (default: deid.free_text from config, 'remove')",
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            metavar="NAME|PATH",
            help="safe-harbor | limited-data-set | a YAML profile "
            "(default: deid.profile from config, 'safe-harbor')",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="DICOM input: where to write the result")
    ] = None,
    dicom_dates: Annotated[
        str,
        typer.Option(
            "--dicom-dates",
            help="DICOM input: remove (Basic Profile) | shift (by the patient's offset)",
        ),
    ] = "remove",
    issuer_system: Annotated[
        str | None,
        typer.Option(
            "--issuer-system",
            help="DICOM input: the PatientID system when IssuerOfPatientID is empty",
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML configuration")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="where keys live")] = None,
) -> None:
    """De-identify one HL7 v2 message or FHIR JSON document and print the FHIR Bundle, or
    one DICOM file and write it to --out."""
    if free_text not in (None, "remove", "tag", "surrogate"):
        typer.echo("--free-text must be remove, tag or surrogate", err=True)
        raise typer.Exit(2)
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        typer.echo(f"cannot read {file}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    settings = load_settings(config, data_dir=data_dir)
    if is_dicom(data):
        if dicom_dates not in ("remove", "shift"):
            typer.echo("--dicom-dates must be remove or shift", err=True)
            raise typer.Exit(2)
        entries = _deid_dicom(data, settings, out, dicom_dates == "shift", issuer_system)
        if report:
            typer.echo(json.dumps(entries, indent=2), err=True)
        return
    mode: FreeTextMode | None = free_text  # type: ignore[assignment]
    try:
        engine = deidentifier(settings, mode, profile)
    except ProfileError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    try:
        result = deidentify_input(data, engine, timezone=settings.timezone)
    except DeidInputError as exc:
        typer.echo(f"not de-identified: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result.bundle, indent=2))
    if report:
        entries = [e.model_dump(exclude_none=True) for e in result.report]
        typer.echo(json.dumps(entries, indent=2), err=True)


def _deid_dicom(
    data: bytes, settings: Settings, out: Path | None, shift_dates: bool, system: str | None
) -> list[dict[str, Any]]:
    """De-identify one DICOM file to ``out``; the report entries. Exits on bad input."""
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from security import load_keyring
    from security.deid.dicom import DicomDeidentifier

    if out is None:
        typer.echo("DICOM input needs --out PATH for the de-identified file", err=True)
        raise typer.Exit(2)
    keys = load_keyring(settings.data_dir, settings.key_files)
    engine = DicomDeidentifier(
        keys.pseudonym,
        keys.dateshift,
        keys.pseudonym_version,
        settings.deid.shift_range_days,
        default_issuer_system=system,
        retain_modified_dates=shift_dates,
    )
    try:
        dataset = dcmread(BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, OSError):
        typer.echo("not de-identified: the file is not readable DICOM", err=True)
        raise typer.Exit(1) from None
    try:
        result = engine.deidentify(dataset)
    except DeidentificationError as exc:  # its messages never carry a value
        typer.echo(f"not de-identified: {exc}", err=True)
        raise typer.Exit(1) from None
    result.dataset.save_as(out, enforce_file_format=True)
    return [e.model_dump(exclude_none=True) for e in result.report]
