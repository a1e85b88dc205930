"""The normalizer's FHIR check agrees with the fhir.resources R4B models (ADR 6).

``gateway.normalize._conform`` replaced model validation on the hot path. These tests hold
it to the models it replaced, which stay the oracle: every Bundle the check passes, the
models pass too (it is never more lenient), on the peer corpus and on messages whose
fields hypothesis fills with awkward text (padding, tabs, control characters, NaN,
exponents, impossible dates and offsets). Where the two disagree the check is the stricter
one, and only for the reasons listed in ``STRICTER``. Malformed input is still rejected
with a reason naming the element and the rule, never the value.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.normalize import NormalizationError, UnsupportedMessageType, _bundle, to_fhir
from gateway.normalize._conform import check_bundle
from tests.conftest import PEER_HL7
from tests.test_normalize import NEWS2_ORU

# Rules the check enforces that the R4B models do not (FHIR says so; the models let it go).
STRICTER = {
    "uri",  # uri: \S+ (the models accept any string, even blank)
    "decimal",  # beyond 1e±1000: no clinical value, and JSON-encoding it would take forever
    "markdown",  # empty (JSON has no empty strings; the models accept any string)
}


def oracle(bundle: dict[str, Any]) -> str | None:
    """The R4B models' verdict, as the normalizer applied them before ADR 6."""
    try:
        Bundle.model_validate({**bundle, "entry": []})
        for entry in bundle["entry"]:
            resource = entry["resource"]
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except ValidationError as exc:
        return str(exc.errors()[0]["loc"])
    return None


def both_verdicts(raw: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str | None, str | None]:
    """(the models' verdict, the check's verdict) on the Bundle the mappers build from raw."""
    built: list[dict[str, Any]] = []

    def capture(bundle: dict[str, Any]) -> None:
        built.append(copy.deepcopy(bundle))
        check(bundle)

    check = _bundle.check_bundle
    monkeypatch.setattr(_bundle, "check_bundle", capture)
    try:
        try:
            to_fhir(raw.encode())
            ours = None
        except NormalizationError as exc:
            ours = str(exc)
    finally:
        monkeypatch.setattr(_bundle, "check_bundle", check)
    if not built:  # the mapper itself refused it: nothing to compare
        return ours, ours
    return oracle(built[0]), ours


def assert_never_more_lenient(theirs: str | None, ours: str | None) -> None:
    if theirs is not None:
        assert ours is not None, f"the models reject {theirs}, the check passed it"
    elif ours is not None:
        assert ours.startswith("FHIR validation failed: ")
        rule = ours.rsplit("(", 1)[1].rstrip(")")
        assert rule in STRICTER, f"the check rejects what the models pass: {ours}"


def test_peer_corpus_bundles_are_identical_and_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for path in sorted((PEER_HL7 / "hl7").glob("*.hl7")):
        raw = path.read_bytes().decode("utf-8", "replace")
        try:
            theirs, ours = both_verdicts(raw, monkeypatch)
        except UnsupportedMessageType:
            continue
        assert_never_more_lenient(theirs, ours)


# Text hypothesis puts in fields: no HL7 delimiters, but whitespace of every kind, control
# characters, signs, exponents, letters of NaN/Infinity, and non-ASCII.
_FIELD = st.text(
    alphabet=st.sampled_from(list("aZ09.5-+eE:/ \t\x0b\x0c\x1c\x1f\x85\xa0\u2028NnIfy%[]é")),
    max_size=12,
)
_GOOD_STAMP = st.sampled_from(
    [
        "",
        "2024",
        "202403",
        "20240301",
        "202403011000",
        "20240301100000+0000",
        "20240301100000.2-0500",
    ]
)
_ANY_STAMP = st.one_of(
    _GOOD_STAMP,
    _FIELD,
    st.from_regex(r"\A(0000|1|19|2024)(0[0-9]|1[0-3])?([0-3][0-9])?([0-2][0-9][0-6][0-9]"
                  r"([0-6][0-9](\.[0-9]{1,6})?)?)?([+-](0[0-9]|1[0-5])[0-9]{2})?\Z"),
)  # fmt: skip
_TYPES = st.sampled_from(["NM", "SN", "ST", "TX", "CWE", "CE", "DTM", "TS", "TM", "RP", "ED", ""])


@st.composite
def fuzzed_oru(draw: st.DrawFn) -> str:
    f, stamp = (lambda: draw(_FIELD)), (lambda: draw(_GOOD_STAMP))
    fuzzed = draw(st.integers(0, 4))  # the one timestamp that may be anything
    stamps = [draw(_ANY_STAMP) if i == fuzzed else draw(_GOOD_STAMP) for i in range(5)]
    return "\r".join(
        [
            f"MSH|^~\\&|WARD-MON|DEMO|WG|WG|{stamp()}||ORU^R01^ORU_R01|F-1|P|2.5.1",
            f"PID|1||{f()}^^^{f()}&{f()}&ISO^{f()}||{f()}^{f()}^{f()}||{stamps[0]}|{f()}"
            f"|||{f()}^{f()}^{f()}^{f()}^{f()}||{f()}^{f()}^{f()}",
            f"NK1|1|{f()}^{f()}|{f()}^{f()}^{f()}|{f()}^^{f()}^^{f()}|{f()}" + "|" * 10 + f(),
            f"PV1|1|{f()}|{f()}^{f()}||{f()}"
            + "|" * 15
            + f"{f()}^^^{f()}^{f()}"
            + "|" * 25
            + f"{stamps[1]}|{stamp()}",
            f"OBR|1|||{f()}^{f()}^{f()}|||{stamps[2]}" + "|" * 15 + f"{stamps[3]}||{f()}|{f()}",
            f"OBX|1|{draw(_TYPES)}|{f()}^{f()}^{f()}^{f()}^{f()}^{f()}||{f()}^{f()}^{f()}^{f()}"
            f"|{f()}^{f()}^{f()}^{f()}^{f()}^{f()}|{f()}|{f()}^{f()}|||{f()}|||{stamps[4]}",
            f"NTE|1||{f()}",
            f"OBX|2|NM|9279-1^Respiratory rate^LN||{f()}|/min^per minute^UCUM|||||F|||{stamp()}",
        ]
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=fuzzed_oru())
def test_the_check_is_never_more_lenient_than_the_r4b_models(raw: str) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        theirs, ours = both_verdicts(raw, monkeypatch)
    assert_never_more_lenient(theirs, ours)


_SPO2 = "OBX|2|NM|59408-5^SpO2^LN||95|"


@pytest.mark.parametrize(
    ("find", "replace", "reason"),
    [
        (_SPO2, "OBX|2|SN|59408-5^SpO2^LN||^NaN|", "Observation.valueQuantity.value (decimal)"),
        (
            _SPO2,
            "OBX|2|SN|59408-5^SpO2^LN||^Infinity|",
            "Observation.valueQuantity.value (decimal)",
        ),
        (
            _SPO2,
            "OBX|2|SN|59408-5^SpO2^LN||^9E+99999|",
            "Observation.valueQuantity.value (decimal)",
        ),
        ("59408-5^SpO2", "59408  5^SpO2", "Observation.code.coding.0.code (code)"),
        ("%^percent^UCUM", "per  cent^percent^UCUM", "Observation.valueQuantity.code (code)"),
        ("^SpO2^LN", "^\x0b^LN", "Observation.code.coding.0.display (string)"),
        (
            "85353-1^Vital signs panel^LN|||20240301100000+0000",
            "85353-1^Vital signs panel^LN|||20240301100000+1430",
            "DiagnosticReport.effectiveDateTime (dateTime)",
        ),
    ],
    ids=["nan", "infinity", "huge-exponent", "code-spaces", "unit-spaces", "blank-display", "tz"],
)
def test_malformed_values_are_rejected_by_element_and_rule(
    find: str, replace: str, reason: str
) -> None:
    broken = NEWS2_ORU.replace(find, replace, 1)
    assert broken != NEWS2_ORU
    with pytest.raises(NormalizationError) as caught:
        to_fhir(broken.encode())
    assert str(caught.value) == f"FHIR validation failed: {reason}"
    assert "NaN" not in str(caught.value) and "TEST0001" not in str(caught.value)


def test_a_checked_bundle_is_plain_json() -> None:
    bundle = to_fhir(NEWS2_ORU.replace(_SPO2, "OBX|2|SN|59408-5^SpO2^LN||^9E+5|").encode())
    text = json.dumps(bundle, allow_nan=False)
    assert '"value": 900000' in text and '"value": 38.2' in text


def test_bundle_structure_errors_name_the_element() -> None:
    base = to_fhir(NEWS2_ORU.encode())

    def patient(b: dict[str, Any]) -> dict[str, Any]:
        resource: dict[str, Any] = b["entry"][0]["resource"]
        return resource

    def rr(b: dict[str, Any]) -> dict[str, Any]:  # the respiratory-rate Observation
        resource: dict[str, Any] = b["entry"][3]["resource"]
        return resource

    cases: list[tuple[Any, str]] = [
        (lambda b: patient(b).update(nickname="x"), "Patient.nickname (unknown-element)"),
        (lambda b: rr(b).pop("status"), "Observation.status (required)"),
        (lambda b: rr(b).update(valueString="x"), "Observation.valueString (one-choice)"),
        (lambda b: rr(b).update(note=[]), "Observation.note (list)"),
        (lambda b: rr(b).update(note={"text": "x"}), "Observation.note (list)"),
        (lambda b: rr(b).update(code={}), "Observation.code (object)"),
        (lambda b: rr(b).update(issued="2024-02-30T10:00:00Z"), "Observation.issued (instant)"),
        (
            lambda b: rr(b).update(subject={"reference": None}),
            "Observation.subject.reference (string)",
        ),
        (
            lambda b: b["entry"][1].update(resource={"resourceType": "Coding"}),
            "Bundle.entry.1.resource (resourceType)",
        ),
        (lambda b: b.update(type="a  b"), "Bundle.type (code)"),
    ]
    for mutate, reason in cases:
        bundle = copy.deepcopy(base)
        mutate(bundle)
        with pytest.raises(NormalizationError) as caught:
            check_bundle(bundle)
        assert str(caught.value) == f"FHIR validation failed: {reason}"
