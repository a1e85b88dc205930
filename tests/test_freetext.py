"""The free-text engine: each identifier category is found, clinical text is left alone,
spans and reports carry no values, and the FHIR engine scrubs free text when asked to.
"""

from __future__ import annotations

import base64
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from security.deid import CATEGORIES, Deidentifier, FreeTextScrubber
from tests.test_deid import DKEY, PKEY, TODAY, make_bundle

SCRUB = FreeTextScrubber()

# One row per category: a sentence, the identifier planted in it, the category it gets.
CASES = [
    ("Seen by Dr. Okonkwo this morning.", "Okonkwo", "NAME"),
    ("Daughter Maribel at bedside.", "Maribel", "NAME"),
    ("Patricia Zorvath called about her mother.", "Patricia Zorvath", "NAME"),
    ("Note signed by Quentin Hollis, RN.", "Quentin Hollis", "NAME"),
    ("SPOKE WITH DAUGHTER CORNELIAX ABOUT THE PLAN", "CORNELIAX", "NAME"),
    ("Call back at (617) 555-0143 after 5pm.", "(617) 555-0143", "PHONE"),
    ("Pager: +44 20 7946 0958", "+44 20 7946 0958", "PHONE"),
    ("Prefers email jo.smith77@example.org for results.", "jo.smith77@example.org", "EMAIL"),
    ("SSN 123-45-6789 verified with the patient.", "123-45-6789", "SSN"),
    ("MRN: A1234567 at the outside hospital.", "A1234567", "ID"),
    ("Pacemaker serial SN-4421-X993 interrogated.", "SN-4421-X993", "ID"),
    ("Monitor MAC 00:1A:2B:3C:4D:5E paired.", "00:1A:2B:3C:4D:5E", "ID"),
    ("Admitted on 03/14/2024 via the ED.", "03/14/2024", "DATE"),
    ("Colonoscopy March 3rd, 2021 was normal.", "March 3rd, 2021", "DATE"),
    ("Seen 2024-02-29T08:15 in clinic.", "2024-02-29T08:15", "DATE"),
    ("A 93-year-old woman with dementia.", "93", "AGE"),
    ("Instructions at https://portal.example.org/p/123456.", "portal.example.org", "URL"),
    ("Home hub at 10.20.30.40 uploaded readings.", "10.20.30.40", "IP"),
    ("Lives at 42 Birchwood Lane, Apt 3, Quincy, MA 02169.", "42 Birchwood Lane", "ADDRESS"),
    ("Mailing address is PO Box 4412.", "PO Box 4412", "ADDRESS"),
    ("Moved here from Albuquerque last spring.", "Albuquerque", "LOCATION"),
    ("Transferred from Saint Elsewhere Memorial Hospital.", "Elsewhere", "HOSPITAL"),
    ("Previously treated at Cedars-Sinai.", "Cedars-Sinai", "HOSPITAL"),
    ("Zip code 90210 on the insurance card.", "90210", "ZIP"),
]


@pytest.mark.parametrize(("text", "value", "category"), CASES)
def test_each_category_is_found_and_replaced_by_its_tag(
    text: str, value: str, category: str
) -> None:
    out = SCRUB.scrub(text)
    assert value not in out.text
    assert f"[{category}]" in out.text
    assert category in {s.category for s in out.spans}


def test_every_category_has_a_case() -> None:
    assert {c for _, _, c in CASES} == set(CATEGORIES)


CLINICAL = (
    "Patient is alert and oriented x3. BP 132/84, HR 88, SpO2 94% on 2L. Creatinine 1.4 "
    "mg/dL. Glasgow Coma Scale 15. History of Parkinson disease and Crohn disease. Murphy "
    "sign negative. Stevens-Johnson syndrome listed as a prior reaction. Continue Lasix 40 "
    "mg IV BID and Tylenol 650 mg PRN. Pain 5/10. Foley catheter removed at 14:30. Spanish "
    "interpreter used. Wilson disease ruled out. Hope to discharge tomorrow. Will follow up "
    "with Cardiology in 2 weeks. Hodgkin lymphoma in remission since 2009. NYHA class II."
)


def test_clinical_text_with_eponyms_drugs_doses_and_years_is_left_alone() -> None:
    out = SCRUB.scrub(CLINICAL)
    assert out.spans == ()
    assert out.text == CLINICAL


def test_ages_under_90_and_years_are_kept() -> None:
    text = "A 67-year-old man, diabetic since 2015."
    assert SCRUB.scrub(text).text == text


def test_spans_name_category_and_rule_never_the_value() -> None:
    text = "Daughter Maribel Quorvath, phone 617-555-0143, MRN 88412345."
    spans = SCRUB.find(text)
    assert spans
    for span in spans:
        assert set(span.__slots__) == {"start", "end", "category", "rule"}  # type: ignore[attr-defined]
        for secret in ("Maribel", "Quorvath", "617", "88412345"):
            assert secret not in span.rule


def test_surrogates_are_typed_keyed_and_stable() -> None:
    text = "Dr. Okonkwo called 617-555-0143 on 3/14/2024; MRN 88412345; 95 yo."
    a = FreeTextScrubber("surrogate", b"k" * 32)
    first, again = a.scrub(text, 10), a.scrub(text, 10)
    other = FreeTextScrubber("surrogate", b"j" * 32).scrub(text, 10)
    assert first.text == again.text
    assert first.text != other.text
    for secret in ("Okonkwo", "617-555-0143", "3/14/2024", "88412345"):
        assert secret not in first.text
    assert "[" not in first.text  # every category here has a typed stand-in
    assert "3/24/2024" in first.text  # the date moved by the given offset
    assert "90+" in first.text


def test_surrogates_need_a_key() -> None:
    with pytest.raises(ValueError, match="key"):
        FreeTextScrubber("surrogate")


# -- the FHIR engine ----------------------------------------------------------------


def _engine(mode: Any = "tag") -> Deidentifier:
    return Deidentifier(PKEY, DKEY, free_text=mode, today=lambda: TODAY)


def _note_bundle(note: str) -> dict[str, Any]:
    bundle = make_bundle()
    obs = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation" and "note" in e["resource"]
    )
    obs["note"] = [{"text": note, "authorString": "Dr Plantedauthor"}]
    return bundle


def test_free_text_is_removed_by_default() -> None:
    result = Deidentifier(PKEY, DKEY, today=lambda: TODAY).deidentify(_note_bundle("hello"))
    assert "hello" not in json.dumps(result.bundle)
    assert any(e.path == "Observation.note" and e.action == "removed" for e in result.report)


def test_tag_mode_keeps_notes_scrubbed_and_reports_categories_without_values() -> None:
    note = "Daughter Maribel called from 617-555-0143 about the Lasix dose."
    result = _engine().deidentify(_note_bundle(note))
    out = json.dumps(result.bundle)
    assert "Daughter [NAME] called from [PHONE] about the Lasix dose." in out
    assert "Plantedauthor" not in out  # Annotation.author is not allowlisted
    scrubbed = {(e.path, e.category) for e in result.report if e.action == "scrubbed"}
    assert ("Observation.note.text", "name") in scrubbed
    assert ("Observation.note.text", "phone") in scrubbed
    report = json.dumps([e.model_dump() for e in result.report])
    assert "Maribel" not in report and "0143" not in report


def test_surrogate_mode_shifts_dates_in_text_by_the_patients_offset() -> None:
    result = _engine("surrogate").deidentify(_note_bundle("Seen on 2024-03-02 by Dr. Okonkwo."))
    out = json.dumps(result.bundle)
    assert "Okonkwo" not in out and "2024-03-02" not in out
    shifted = next(
        e["resource"]["effectiveDateTime"]
        for e in result.bundle["entry"]
        if e["resource"].get("effectiveDateTime", "").startswith("20")
        and "T" in e["resource"]["effectiveDateTime"]
    )
    assert shifted[:10] in out  # the note's date moved exactly as the structured one


def test_narrative_and_text_attachments_are_scrubbed_not_dropped() -> None:
    bundle = _note_bundle("ok")
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "11526-1"}]},
        "subject": {"reference": bundle["entry"][0]["fullUrl"]},
        "text": {"status": "generated", "div": "<div><p>Dr. Okonkwo &amp; team</p></div>"},
        "conclusion": "Discussed with wife Maribel.",
        "presentedForm": [
            {
                "contentType": "text/plain; charset=utf-8",
                "data": base64.b64encode(b"MRN: 88412345. Stable.").decode(),
            },
            {"contentType": "application/pdf", "data": base64.b64encode(b"%PDF").decode()},
        ],
    }
    bundle["entry"].append({"fullUrl": "urn:uuid:77", "resource": report})
    result = _engine().deidentify(bundle)
    out = next(e["resource"] for e in result.bundle["entry"] if "presentedForm" in e["resource"])
    assert out["conclusion"] == "Discussed with wife [NAME]."
    assert "Okonkwo" not in out["text"]["div"] and out["text"]["div"].startswith("<div xmlns=")
    forms = out["presentedForm"]
    assert len(forms) == 1  # the PDF is not text: removed
    assert base64.b64decode(forms[0]["data"]) == b"MRN: [ID]. Stable."


# -- property tests -------------------------------------------------------------------

_WORDS = ["the", "patient", "reports", "stable", "overnight", "plan", "continue", "no", "pain"]
_filler = st.lists(st.sampled_from(_WORDS), min_size=0, max_size=6).map(" ".join)
_digits = st.text(string.digits, min_size=1, max_size=1)


@st.composite
def _identifier(draw: st.DrawFn) -> tuple[str, str]:
    """(a sentence fragment with a cue, the identifier in it)."""
    d = lambda n: "".join(draw(_digits) for _ in range(n))  # noqa: E731
    kind = draw(st.sampled_from(["phone", "email", "ssn", "ip", "url", "date", "mrn", "name"]))
    if kind == "phone":
        v = f"({draw(st.integers(201, 989))}) {draw(st.integers(200, 999))}-{d(4)}"
        return f"call {v}", v
    if kind == "email":
        v = draw(st.text(string.ascii_lowercase, min_size=3, max_size=10)) + d(2) + "@example.org"
        return f"email {v}", v
    if kind == "ssn":
        v = f"{d(3)}-{d(2)}-{d(4)}"
        return f"SSN {v}", v
    if kind == "ip":
        v = ".".join(str(draw(st.integers(1, 254))) for _ in range(4))
        return f"device at {v}", v
    if kind == "url":
        v = f"https://p{d(3)}.example.com/r/{d(5)}"
        return f"see {v}", v
    if kind == "date":
        v = f"{draw(st.integers(1, 12))}/{draw(st.integers(1, 28))}/{draw(st.integers(1950, 2030))}"
        return f"seen on {v}", v
    if kind == "mrn":
        v = f"{draw(st.sampled_from(['', 'A', 'MR']))}{d(7)}"
        return f"MRN {v}", v
    name = draw(st.text("bdfgklmnprstvz", min_size=2, max_size=4)).join("ao").capitalize()
    cue = draw(st.sampled_from(["Dr.", "daughter", "spoke with", "Mrs."]))
    return f"{cue} {name}x", f"{name}x"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=_filler, planted=_identifier(), after=_filler)
def test_planted_identifiers_in_random_sentences_never_survive(
    before: str, planted: tuple[str, str], after: str
) -> None:
    fragment, value = planted
    text = f"{before} {fragment} {after}".strip().capitalize() + "."
    assert value not in SCRUB.scrub(text).text
