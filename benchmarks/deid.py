"""De-identification throughput beside plain fhir.resources parse+dump of the same data.

Run: .venv/bin/python benchmarks/deid.py [--bundles 600] [--repeat 3] [--seed 7]
Prints (and benchmarks/deid.out keeps) resources/s for each path, measured in this run on
the same FHIR Bundles, bytes in and bytes out:

- baseline: ``fhir.resources`` R4B ``Bundle.model_validate_json`` + ``model_dump_json``,
  the least a FHIR-aware service does with a Bundle (parse, validate, serialise);
- ``Deidentifier.deidentify`` after ``json.loads``, then ``json.dumps`` of the output,
  once per profile and free-text mode the gateway ships;
- and for DICOM, pydicom ``dcmread`` + ``save_as`` against ``dcmread`` + the Annex E
  ``DicomDeidentifier`` + ``save_as`` on pydicom's bundled CT image.

The Bundles are the leakage harness's synthetic patients (ORU^R01 and ADT^A01 with a
planted value in every identifying field) mapped by ``gateway.normalize.to_fhir``, and
the demo feed's vital-sign ORUs: identifier-dense and typical input. Best of ``--repeat``
runs; the ratio column is resources/s over the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fhir.resources.R4B.bundle import Bundle  # noqa: E402

from benchmarks.leakage import make_patients  # noqa: E402
from gateway._demo_feed import synthetic_messages  # noqa: E402
from gateway.normalize import to_fhir  # noqa: E402
from security.deid import Deidentifier  # noqa: E402

TODAY = date(2025, 6, 1)
PKEY, DKEY = b"bench-pseudonym-key-32-bytes!!!!", b"bench-dateshift-key-32-bytes!!!!"


def corpus(n: int, seed: int) -> list[bytes]:
    """``n`` Bundles as JSON bytes: half identifier-dense, half demo-feed vitals."""
    dense = [to_fhir(p.message) for p in make_patients(n // 2, seed)]
    typical = [to_fhir(m) for m in synthetic_messages(max(1, n // 20), 10, seed)][: n - len(dense)]
    return [json.dumps(b).encode() for b in dense + typical]


def count_resources(bundles: list[bytes]) -> int:
    return sum(len(json.loads(b).get("entry", [])) for b in bundles)


def best_of(repeat: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def fhir_resources_roundtrip(bundles: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        for raw in bundles:
            Bundle.model_validate_json(raw).model_dump_json()

    return run


def deid_roundtrip(bundles: list[bytes], deid: Deidentifier) -> Callable[[], None]:
    def run() -> None:
        for raw in bundles:
            out: Any = deid.deidentify(json.loads(raw)).bundle
            json.dumps(out)

    return run


def variants() -> list[tuple[str, Deidentifier]]:
    """The de-identifier configurations worth a row: each profile, each free-text mode."""
    rows = []
    for profile, free_text in (
        ("safe-harbor", "remove"),
        ("safe-harbor", "tag"),
        ("limited-data-set", "remove"),
    ):
        deid = Deidentifier(
            PKEY,
            DKEY,
            free_text=free_text,  # type: ignore[arg-type]
            profile=profile,
            today=lambda: TODAY,
        )
        rows.append((f"{profile}, free text {free_text}", deid))
    return rows


def dicom_rows(repeat: int) -> list[tuple[str, float, int]]:
    """pydicom read+write of CT_small against read + Annex E + write, 200 instances."""
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from security.deid.dicom import DicomDeidentifier

    raw = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()  # type: ignore[arg-type]
    n = 200
    engine = DicomDeidentifier(PKEY, DKEY, default_issuer_system="urn:bench")

    def plain() -> None:
        for _ in range(n):
            dcmread(BytesIO(raw)).save_as(BytesIO())

    def deid(shift: bool) -> Callable[[], None]:
        engine.retain_modified_dates = shift

        def run() -> None:
            for _ in range(n):
                engine.deidentify(dcmread(BytesIO(raw))).dataset.save_as(BytesIO())

        return run

    return [
        ("pydicom read+write (baseline)", best_of(repeat, plain), n),
        ("Annex E basic profile", best_of(repeat, deid(False)), n),
        ("Annex E + modified dates", best_of(repeat, deid(True)), n),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    bundles = corpus(args.bundles, args.seed)
    resources = count_resources(bundles)
    size = sum(map(len, bundles))
    print(
        f"de-identification throughput: {len(bundles)} Bundles, {resources} resources, "
        f"{size / len(bundles) / 1024:.1f} KiB/Bundle; best of {args.repeat}; "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, one thread"
    )
    print()
    print(f"   {'path':<38} {'resources/s':>12} {'µs/Bundle':>10} {'ratio':>7}")
    base = best_of(args.repeat, fhir_resources_roundtrip(bundles))
    rows = [("fhir.resources R4B parse+dump (baseline)", base)]
    rows += [(name, best_of(args.repeat, deid_roundtrip(bundles, d))) for name, d in variants()]
    for name, seconds in rows:
        print(
            f"   {name:<38} {resources / seconds:>12,.0f} "
            f"{seconds / len(bundles) * 1e6:>10,.0f} {base / seconds:>7.2f}"
        )
    print()
    print("   DICOM, pydicom's CT_small.dcm (39 KiB), bytes in and bytes out:")
    print(f"   {'path':<38} {'instances/s':>12} {'µs/inst':>10} {'ratio':>7}")
    drows = dicom_rows(args.repeat)
    dbase = drows[0][1]
    for name, seconds, n in drows:
        rate, micros = n / seconds, seconds / n * 1e6
        print(f"   {name:<38} {rate:>12,.0f} {micros:>10,.0f} {dbase / seconds:>7.2f}")


if __name__ == "__main__":
    main()
