"""The leakage harness (``benchmarks/leakage.py``) on a small sample, as a test.

Structured fields: every planted identifier is gone (100%, the issue's bar), with free
text removed and with free text tagged. Free text: on notes from a seed the engine was
not tuned on, recall >= 99% and precision >= 95%. The committed run over 2,000 notes
reaches >= 99.5% recall; a 300-note sample has about 1,100 planted identifiers, so one
or two misses more or less move recall by 0.2 points: 99% is the bound that sample size
can hold without flaking, and still fails on any real regression.
"""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.leakage import (
    DKEY,
    PKEY,
    TODAY,
    free_text_score,
    make_notes,
    make_patients,
    pipeline_free_text_leaks,
    structured_recall,
)
from gateway.normalize import escape, to_fhir
from security.deid import Deidentifier


@pytest.mark.parametrize("free_text", ["remove", "tag"])
def test_structured_recall_is_100_percent_per_category(free_text: str) -> None:
    recall = structured_recall(make_patients(30, seed=2024), free_text)
    assert len(recall) >= 15
    missed = {cat: n - ok for cat, (n, ok) in recall.items() if ok != n}
    assert missed == {}


def test_free_text_recall_and_precision_meet_their_bounds() -> None:
    score = free_text_score(make_notes(300, seed=4242))
    assert sum(score.planted.values()) > 900
    assert score.recall >= 0.99, score.caught
    assert score.precision >= 0.95


def test_notes_sent_through_hl7_and_the_fhir_engine_lose_their_identifiers() -> None:
    planted, leaked = pipeline_free_text_leaks(make_notes(60, seed=77))
    assert planted > 150
    assert leaked <= planted * 0.01


_value = st.text(string.ascii_letters + string.digits + " .-'", min_size=4, max_size=14).map(
    lambda s: "Zq" + s.strip()
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(_value, min_size=12, max_size=12), free_text=st.sampled_from(["remove", "tag"])
)
def test_generated_identifiers_in_structured_fields_never_survive(
    values: list[str], free_text: str
) -> None:
    """Any string planted in PID, NK1 and PV1 (and NTE when free text is removed) is gone
    from the Bundle and the report, whatever its letters, digits and punctuation."""
    e = [escape(v) for v in values]
    segs = [
        "MSH|^~\\&|LIS|HOSP|WG|WG|20240301101500||ORU^R01^ORU_R01|HYP1|P|2.5.1",
        f"PID|1|{e[0]}|{e[0]}^^^HOSP^MR~{e[1]}^^^SSA^SS||{e[2]}^{e[3]}||19600101|F|{e[4]}||"
        f"{e[5]}^^{e[6]}^MA^{e[7]}||{e[8]}^PRN^PH^{e[9]}",
        f"NK1|1|{e[10]}^{e[3]}|DAU^Daughter|{e[5]}|{e[8]}",
        f"PV1|1|I|{e[11]}^101||||{e[10]}^X|||||||||||INP|{e[1]}",
        "OBR|1||HYP1|V^Vitals^L|||20240301101000",
        "OBX|1|NM|8867-4^Heart rate^LN||80|/min^^UCUM|||||F|||20240301101000",
    ]
    if free_text == "remove":  # kept, an NTE is free text: the free-text tests bound that
        segs.append(f"NTE|1||{e[2]} {e[11]}")
    deid = Deidentifier(PKEY, DKEY, free_text=free_text, today=lambda: TODAY)  # type: ignore[arg-type]
    result = deid.deidentify(to_fhir(("\r".join(segs) + "\r").encode()))
    out = json.dumps({"b": result.bundle, "r": [x.model_dump() for x in result.report]})
    for value in values:
        if len(value) >= 6:  # shorter ones could occur by chance in codes and pseudonyms
            assert value not in out
