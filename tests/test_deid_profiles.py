"""De-identification profiles: Safe Harbor and the limited data set, per identifier category.

Sources the tables cite:
- HIPAA Safe Harbor, 45 CFR 164.514(b)(2)(i): the 18 identifiers; ZIP3 kept only where
  the 3-digit area holds more than 20,000 people; ages over 89 in one "90 or older" group.
- HHS, "Guidance Regarding Methods for De-identification of PHI" (2012), section 2.4:
  the 17 restricted ZIP3s (2000 census).
- HIPAA limited data set, 45 CFR 164.514(e)(2): 16 direct identifiers removed; dates,
  town or city, State and ZIP code may stay.

One bundle plants a distinctive value in every category, in each resource type the
gateway emits (Patient, Encounter, Observation, DiagnosticReport); the tests look for
each value in every string the output holds (bundle and report).
"""

from __future__ import annotations

import base64
import json
import re
import string
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway._config import DeidConfig
from security import load_keyring
from security.deid import (
    BUILTIN_PROFILES,
    DeidentificationError,
    Deidentifier,
    DeidResult,
    ProfileError,
    load_profile,
)

PKEY = b"p" * 32
DKEY = b"d" * 32
TODAY = date(2025, 6, 1)
MR_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
PAT, ENC, OBS, REP = (f"urn:uuid:{n}0000000-0000-4000-8000-000000000000" for n in "1234")

# Category -> planted value. Dates, city and ZIP are the quasi-identifiers that the
# limited data set keeps; every other category is a direct identifier under both rules.
VALUES = {
    "name": "Zqfamilyname",
    "given": "Zqgivenname",
    "street": "17 Zqstreet Road",
    "city": "Zqcityville",
    "county": "Zqcounty",
    "zip": "90210-7788",
    "phone": "+1-555-867-5309",
    "fax": "+1-555-867-0000",
    "email": "zq.patient@zqmail.example",
    "ssn": "999-12-3456",
    "mrn": "ZQMRN884412",
    "plan": "ZQPLAN55190",
    "account": "ZQACCT77341",
    "licence": "ZQDL9912837",
    "vehicle": "ZQPLATE4242",
    "device": "ZQDEVSN3019",
    "url": "https://zqhome.example/patient/4711",
    "ip": "203.0.113.77",
    "photo": "Zqphototitle",
    "visit": "ZQVISIT5562",
    "accession": "ZQACC190233",
    "provider": "Zqdoctorname",
    "kin": "Zqkinsname",
    "free": "Zqfreetextnote",
}
LIMITED_DATA_SET_KEEPS = {"city", "zip"}
# HHS 2012 guidance, section 2.4: ZIP3 areas of 20,000 people or fewer (2000 census).
RESTRICTED_ZIP3 = ["036", "059", "063", "102", "203", "556", "692", "790", "821"]
RESTRICTED_ZIP3 += ["823", "830", "831", "878", "879", "884", "890", "893"]


def make_bundle(v: dict[str, str], birth: str = "1960-04-12", when: str = "2024-03-02") -> Any:
    """A Bundle of the four resource types we emit, a value planted in every category."""

    def ident(system: str, value: str, code: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"system": f"urn:oid:1.2.3.{system}", "value": value}
        if code:
            out["type"] = {"coding": [{"code": code}]} if code != "MR" else MR_TYPE
        return out

    narrative = {"status": "generated", "div": f"<div>{v['name']} {v['free']}</div>"}
    ext = [{"url": v["url"], "valueString": v["vehicle"]}]
    patient = {
        "resourceType": "Patient",
        "id": v["mrn"],
        "meta": {"source": v["url"]},
        "text": narrative,
        "extension": ext,
        "identifier": [
            ident("1", v["mrn"], "MR"),
            ident("2", v["ssn"], "SS"),
            ident("3", v["plan"], "MB"),
            ident("4", v["account"], "AN"),
            ident("5", v["licence"], "DL"),
        ],
        "name": [{"family": v["name"], "given": [v["given"]], "text": v["name"]}],
        "telecom": [
            {"system": "phone", "value": v["phone"]},
            {"system": "fax", "value": v["fax"]},
            {"system": "email", "value": v["email"]},
            {"system": "url", "value": v["url"]},
        ],
        "gender": "female",
        "birthDate": birth,
        "address": [
            {
                "line": [v["street"]],
                "city": v["city"],
                "district": v["county"],
                "state": "MA",
                "postalCode": v["zip"],
                "text": v["street"],
            }
        ],
        "photo": [
            {"contentType": "image/jpeg", "data": _b64(v["photo"]), "title": v["photo"]},
        ],
        "contact": [
            {
                "name": {"family": v["kin"]},
                "telecom": [{"system": "phone", "value": v["phone"]}],
                "address": {"line": [v["street"]], "city": v["city"]},
            }
        ],
    }
    encounter = {
        "resourceType": "Encounter",
        "text": narrative,
        "identifier": [ident("6", v["visit"])],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": PAT, "display": v["name"]},
        "participant": [{"individual": {"display": v["provider"]}}],
        "period": {"start": f"{when}T08:30:00Z", "end": f"{when}T17:00:00Z"},
        "location": [{"location": {"display": v["street"]}}],
        "account": [{"display": v["account"]}],
    }
    observation = {
        "resourceType": "Observation",
        "text": narrative,
        "identifier": [ident("7", v["accession"])],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": v["free"]},
        "subject": {"reference": PAT},
        "encounter": {"reference": ENC},
        "effectiveDateTime": f"{when}T09:15:00Z",
        "issued": f"{when}T10:00:00Z",
        "valueQuantity": {"value": 80, "unit": "/min"},
        "performer": [{"display": v["provider"]}],
        "device": {"display": v["device"]},
        "note": [{"text": f"{v['free']} seen at {v['ip']} by {v['provider']}"}],
        "extension": ext,
        v["vehicle"]: v["vehicle"],  # an unknown element, named by a value
    }
    report = {
        "resourceType": "DiagnosticReport",
        "text": narrative,
        "identifier": [ident("8", v["accession"])],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8"}]},
        "subject": {"reference": PAT},
        "effectiveDateTime": when,
        "issued": f"{when}T11:00:00Z",
        "result": [{"reference": OBS}],
        "resultsInterpreter": [{"display": v["provider"]}],
        "conclusion": f"{v['free']} {v['url']}",
        "presentedForm": [{"contentType": "text/plain", "data": _b64(v["free"])}],
    }
    return {
        "resourceType": "Bundle",
        "id": v["visit"],
        "type": "collection",
        "entry": [
            {"fullUrl": PAT, "resource": patient},
            {"fullUrl": ENC, "resource": encounter},
            {"fullUrl": OBS, "resource": observation},
            {"fullUrl": REP, "resource": report},
        ],
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def run(profile: str, bundle: Any) -> DeidResult:
    return Deidentifier(PKEY, DKEY, profile=profile, today=lambda: TODAY).deidentify(bundle)


_ID = re.compile(r"(?:[A-Za-z]+/)?v1-[0-9a-f]{40}")


def output_strings(result: DeidResult) -> list[str]:
    """Every key and string leaf of the bundle and the report, but the pseudonymous ids
    (40 hex digits could hold a short digit string by chance)."""
    found: list[str] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                found.append(str(k))
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        elif isinstance(obj, str) and not _ID.fullmatch(obj):
            found.append(obj)

    walk(result.bundle)
    walk([e.model_dump() for e in result.report])
    return found


def survivors(result: DeidResult, planted: dict[str, str]) -> set[str]:
    """The categories whose planted value (or ZIP5) appears anywhere in the output."""
    hay = "\x00".join(output_strings(result))
    found = {cat for cat, value in planted.items() if value in hay}
    if "zip" in planted and planted["zip"][:5] in hay:
        found.add("zip")
    return found


def only(result: DeidResult, rtype: str) -> dict[str, Any]:
    (resource,) = [
        e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == rtype
    ]
    return resource  # type: ignore[no-any-return]


def rules(result: DeidResult) -> set[tuple[str, str, str]]:
    return {(e.path, e.action, e.rule) for e in result.report}


# -- the built-in profiles ---------------------------------------------------------


def test_builtin_profiles_ship_as_package_data() -> None:
    folder = resources.files("security.deid").joinpath("profiles")
    assert {f"{name}.yaml" for name in BUILTIN_PROFILES} <= {p.name for p in folder.iterdir()}
    assert load_profile("safe-harbor").dates == "shift"
    assert load_profile("limited-data-set").dates == "keep"


def test_safe_harbor_restricted_zip3_list_is_the_hhs_list() -> None:
    """The 17 ZIP3s of 20,000 people or fewer, HHS 2012 guidance section 2.4."""
    address = load_profile("safe-harbor").resources["Patient"].children["address"]
    zip_rule = address.children["postalCode"]  # type: ignore[union-attr]
    assert sorted(zip_rule.restricted) == RESTRICTED_ZIP3  # type: ignore[union-attr]
    assert zip_rule.digits == 3  # type: ignore[union-attr]


@pytest.mark.parametrize("category", sorted(VALUES))
@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
def test_each_identifier_category_per_profile(profile: str, category: str) -> None:
    """Every category is gone under Safe Harbor; the limited data set keeps city and ZIP5."""
    result = run(profile, make_bundle(VALUES))
    kept = survivors(result, {category: VALUES[category]})
    keeps = LIMITED_DATA_SET_KEEPS if profile == "limited-data-set" else set()
    assert kept == {category} & keeps
    assert result.identifiers[0] == {"system": "urn:oid:1.2.3.1", "value": VALUES["mrn"]}


def test_both_profiles_keep_the_clinical_content() -> None:
    for profile in BUILTIN_PROFILES:
        result = run(profile, make_bundle(VALUES))
        assert only(result, "Patient")["gender"] == "female"
        assert only(result, "Encounter")["status"] == "finished"
        assert only(result, "Observation")["valueQuantity"] == {"value": 80, "unit": "/min"}
        report = only(result, "DiagnosticReport")
        assert report["result"] == [
            {"reference": f"Observation/{only(result, 'Observation')['id']}"}
        ]


# ZIP codes: (input, safe-harbor output, limited-data-set output); None = removed.
ZIPS = [
    ("02139", "021", "02139"),
    ("90210-7788", "902", "90210"),
    ("902107788", "902", "90210"),
    ("03601", "000", "03601"),  # 036 is restricted
    ("89301", "000", "89301"),  # 893 is restricted
    ("03701", "037", "03701"),  # 037 is not
    ("K1A 0B1", None, None),  # not a US ZIP: removed, never cut
    ("1234", None, None),
    ("021", None, None),
]


@pytest.mark.parametrize(("raw", "harbor", "limited"), ZIPS)
def test_zip_codes_per_profile(raw: str, harbor: str | None, limited: str | None) -> None:
    for profile, expected in (("safe-harbor", harbor), ("limited-data-set", limited)):
        result = run(profile, make_bundle({**VALUES, "zip": raw}))
        (address,) = only(result, "Patient")["address"]
        assert address.get("postalCode") == expected
        if expected is None:
            assert ("Patient.address.postalCode", "removed", "fail-closed:not-a-us-zip") in rules(
                result
            )


@pytest.mark.parametrize("zip3", RESTRICTED_ZIP3)
def test_every_restricted_zip3_becomes_000_under_safe_harbor(zip3: str) -> None:
    result = run("safe-harbor", make_bundle({**VALUES, "zip": f"{zip3}42"}))
    assert only(result, "Patient")["address"][0]["postalCode"] == "000"
    assert ("Patient.address.postalCode", "generalized", "safe-harbor:zip3-restricted") in rules(
        result
    )


def test_report_names_the_rule_of_each_profile() -> None:
    harbor = rules(run("safe-harbor", make_bundle(VALUES, birth="1930-01-01")))
    assert ("Patient.address.postalCode", "generalized", "safe-harbor:zip3") in harbor
    assert ("Patient.birthDate", "generalized", "safe-harbor:age-over-89") in harbor
    assert ("Observation.effectiveDateTime", "shifted", "dateshift:per-patient") in harbor
    assert ("Patient.address.city", "removed", "safe-harbor:geographic") in harbor
    limited = rules(run("limited-data-set", make_bundle(VALUES, birth="1930-01-01")))
    assert ("Patient.address.postalCode", "generalized", "limited-data-set:zip5") in limited
    assert ("Patient.birthDate", "kept", "limited-data-set:dates") in limited
    assert ("Observation.effectiveDateTime", "kept", "limited-data-set:dates") in limited
    assert ("Patient.address.line", "removed", "safe-harbor:geographic") in limited
    assert ("Patient.telecom", "removed", "safe-harbor:telecom") in limited


def test_dates_shift_under_safe_harbor_and_stay_under_the_limited_data_set() -> None:
    harbor = run("safe-harbor", make_bundle(VALUES))
    limited = run("limited-data-set", make_bundle(VALUES))
    assert only(limited, "Observation")["effectiveDateTime"] == "2024-03-02T09:15:00Z"
    assert only(limited, "Patient")["birthDate"] == "1960-04-12"
    assert only(limited, "DiagnosticReport")["effectiveDateTime"] == "2024-03-02"
    shifted = only(harbor, "Observation")["effectiveDateTime"]
    offset = (date.fromisoformat(shifted[:10]) - date(2024, 3, 2)).days
    assert -365 <= offset <= -1
    assert only(harbor, "Patient")["birthDate"] == str(date(1960, 4, 12) + timedelta(offset))


@pytest.mark.parametrize(
    ("birth", "aggregated"),
    [("1935-06-01", True), ("1935-06-02", False), ("1935", True), ("1936", False)],
)
def test_over_89_is_the_age_group_90_or_older_and_still_valid_fhir(
    birth: str, aggregated: bool
) -> None:
    """Safe Harbor: ages over 89 aggregated into "90 or older"; TODAY is 2025-06-01."""
    patient = only(run("safe-harbor", make_bundle(VALUES, birth=birth)), "Patient")
    assert ("birthDate" not in patient) is aggregated
    if aggregated:
        assert patient["_birthDate"]["extension"][0]["valueCode"] == "masked"
        (group,) = patient["extension"]
        assert group["url"].endswith("/age-group")
        assert group["valueRange"] == {
            "low": {"value": 90, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}
        }
        assert birth not in json.dumps(patient)
    get_fhir_model_class("Patient").model_validate(patient)
    limited = only(run("limited-data-set", make_bundle(VALUES, birth=birth)), "Patient")
    assert limited["birthDate"] == birth and "extension" not in limited


@pytest.mark.parametrize("profile", BUILTIN_PROFILES)
@pytest.mark.parametrize("birth", ["1930-01-01", "1980-02-29"])
def test_every_output_resource_validates_as_fhir_r4(profile: str, birth: str) -> None:
    for entry in run(profile, make_bundle(VALUES, birth=birth)).bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_a_single_resource_is_accepted_as_well_as_a_bundle() -> None:
    patient = make_bundle(VALUES)["entry"][0]["resource"]
    result = run("safe-harbor", patient)
    assert [e["resource"]["resourceType"] for e in result.bundle["entry"]] == ["Patient"]
    assert survivors(result, VALUES) == set()
    observation = make_bundle(VALUES)["entry"][2]["resource"]
    with pytest.raises(DeidentificationError, match="no patient identifier"):
        run("safe-harbor", observation)  # no Patient, no pseudonym: refused
    with pytest.raises(DeidentificationError, match="resourceType"):
        run("safe-harbor", {"entry": []})


# -- user profiles -----------------------------------------------------------------

BIRTH_SEX = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    return str(path)


def test_a_user_profile_extends_a_builtin_and_allowlists_one_extension(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
version: 1
extends: safe-harbor
resources:
  Patient:
    extension:
      {BIRTH_SEX}: {{valueCode: [F, M, UNK]}}
""",
    )
    bundle = make_bundle(VALUES)
    bundle["entry"][0]["resource"]["extension"].append({"url": BIRTH_SEX, "valueCode": "F"})
    bundle["entry"][0]["resource"]["extension"].append({"url": BIRTH_SEX, "valueCode": "Zqsex"})
    result = run(path, bundle)
    assert only(result, "Patient")["extension"] == [{"url": BIRTH_SEX, "valueCode": "F"}]
    assert survivors(result, {**VALUES, "sex": "Zqsex"}) == set()
    assert ("Patient.extension", "removed", "fail-closed:extension") in rules(result)
    assert only(result, "Patient")["address"] == [{"state": "MA", "postalCode": "902"}]


def test_extensions_stay_removed_unless_allowlisted() -> None:
    result = run("safe-harbor", make_bundle(VALUES))
    assert "extension" not in only(result, "Observation")
    assert ("Observation.extension", "removed", "fail-closed:extension") in rules(result)


def test_an_edited_profile_file_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nextends: safe-harbor\n")
    assert load_profile(path).dates == "shift"
    Path(path).write_text("version: 1\nextends: safe-harbor\ndates: keep  # edited\n")
    assert load_profile(path).dates == "keep"


SECRET = "Zqsecretvalue 999-12-3456"  # a data value pasted into a profile by mistake
BAD_PROFILES = [
    ("version: 2\nextends: safe-harbor", "version: must be 1"),
    ("version: 1\nextends: nothing", "extends: must name a built-in profile"),
    ("version: 1\nextends: safe-harbor\ndates: blur", "dates: must be one of shift, keep"),
    ("version: 1\nextends: safe-harbor\nzipcode: 3", "zipcode: unknown setting"),
    ("version: 1\ndates: shift", "agesOver89: required"),
    (
        "version: 1\nextends: safe-harbor\nresources: {Patient: {gender: strng}}",
        "resources.Patient.gender: unknown rule",
    ),
    (
        "version: 1\nextends: safe-harbor\nresources: {Patinet: {gender: string}}",
        "resources.Patinet: not a FHIR R4 resource type",
    ),
    (
        "version: 1\nextends: safe-harbor\nresources: {Patient: {name: {family: string}}}",
        "resources.Patient.name: a direct identifier cannot be allowlisted",
    ),
    (
        "version: 1\nextends: safe-harbor\ntypes: {Address: {line: string}}",
        "types.Address.line: a direct identifier cannot be allowlisted",
    ),
    (
        "version: 1\nextends: safe-harbor\nresources: {Observation: {note: Annotation}}",
        "resources.Observation.note: free text is kept only under freeText",
    ),
    (
        "version: 1\nextends: safe-harbor\ntypes: {Period: {start: birthDate}}",
        "types.Period.start: birthDate is valid only directly under a resource",
    ),
    (
        "version: 1\nextends: safe-harbor\npostalCode: {restrictedZip3: [036]}",
        "postalCode.restrictedZip3[0]: a quoted 3-digit string",
    ),
    (
        "version: 1\nextends: safe-harbor\npostalCode: {digits: 4}",
        "postalCode.digits: must be 3 or 5",
    ),
    (
        "version: 1\nextends: safe-harbor\ntypes: {Coding: {code: Coding}}",
        "types.Coding: refers to itself",
    ),
    (
        "version: 1\nextends: safe-harbor\nresources: {Patient: {gender: [F, 1]}}",
        "resources.Patient.gender: a list of codes must hold quoted strings",
    ),
    (
        f"version: 1\nextends: safe-harbor\nresources: {{Patient: {{'{SECRET}': string}}}}",
        "resources.Patient.*: not a FHIR element name",
    ),
    (
        f"version: 1\nextends: safe-harbor\nresources: {{Patient: {{extension: {{'{SECRET}': {{valueCode: [F]}}}}}}}}",  # noqa: E501
        "resources.Patient.extension.*: an extension is named by its absolute URL",
    ),
    (f"version: 1\nresources: {{Patient: [{SECRET}}}", "not valid YAML (line"),
]


@pytest.mark.parametrize(("text", "message"), BAD_PROFILES)
def test_an_invalid_profile_is_refused_naming_the_path_never_a_value(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError, match=re.escape(message)) as err:
        Deidentifier(PKEY, DKEY, profile=path)
    assert str(err.value).startswith(f"profile {path}: ")
    assert "Zqsecret" not in str(err.value) and "999-12" not in str(err.value)


@pytest.mark.parametrize("spec", ["safe_harbour", "Zqsecretvalue"])
def test_an_unknown_profile_name_lists_the_builtins_without_echoing_it(spec: str) -> None:
    with pytest.raises(ProfileError, match="safe-harbor, limited-data-set") as err:
        load_profile(spec)
    assert spec not in str(err.value)


def test_a_missing_profile_file_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read it"):
        load_profile(tmp_path / "missing.yaml")


def test_the_gateway_builds_its_deidentifier_from_deid_config(tmp_path: Path) -> None:
    keys = load_keyring(tmp_path)
    engine = DeidConfig(profile="limited-data-set").deidentifier(keys)
    assert engine.profile.name == "limited-data-set"
    assert DeidConfig().deidentifier(keys, profile="safe-harbor").profile.dates == "shift"
    with pytest.raises(ValueError, match="not a FHIR R4 resource type"):
        DeidConfig(profile=write(tmp_path, "version: 1\nextends: safe-harbor\nresources: {X: {}}"))


# -- generated identifiers ---------------------------------------------------------

_TAIL = string.ascii_letters + string.digits + " .-'"


def _word(tag: str) -> st.SearchStrategy[str]:
    return st.text(_TAIL, min_size=3, max_size=12).map(lambda s, t=tag: f"Zq{t}{s}".strip())


def _digits(n: int) -> st.SearchStrategy[str]:
    return st.integers(0, 10**n - 1).map(lambda i: f"{i:0{n}d}")


_PLANTED = st.fixed_dictionaries(
    {
        "name": _word("n"),
        "given": _word("g"),
        "street": st.builds(lambda n, w: f"{n} {w} St", st.integers(1, 9999), _word("s")),
        "city": _word("c"),
        "county": _word("k"),
        "zip": st.builds(lambda a, b: f"{a}-{b}", _digits(5), _digits(4)),
        "phone": st.builds(lambda a, b: f"({a}) 555-{b}", _digits(3), _digits(4)),
        "fax": st.builds(lambda a, b: f"+1 {a} 555 {b}", _digits(3), _digits(4)),
        "email": st.builds(lambda a, b: f"{a}@{b}.example", _digits(6), _word("e")),
        "ssn": st.builds(lambda a, b, c: f"{a}-{b}-{c}", _digits(3), _digits(2), _digits(4)),
        "mrn": _word("m"),
        "plan": _word("h"),
        "account": _word("a"),
        "licence": _word("l"),
        "vehicle": _word("v"),
        "device": _word("d"),
        "url": st.builds(lambda a, b: f"https://{a}.example/p/{b}", _digits(5), _digits(6)),
        "ip": st.builds(lambda *o: ".".join(map(str, o)), *(st.integers(1, 254) for _ in range(4))),
        "photo": _word("p"),
        "visit": _word("x"),
        "accession": _word("y"),
        "provider": _word("r"),
        "kin": _word("q"),
        "free": _word("f"),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    planted=_PLANTED,
    born=st.dates(date(1915, 1, 1), date(1999, 12, 31)),
    when=st.dates(date(2015, 1, 1), date(2024, 12, 31)),
)
def test_generated_identifiers_never_survive_per_profile(
    planted: dict[str, str], born: date, when: date
) -> None:
    """Safe Harbor: no planted value (nor the ZIP5, nor an exact date) survives anywhere.
    Limited data set: no direct identifier survives; dates, city and ZIP5 do."""
    values = list(planted.values())
    assume(all(a == b or a not in b for a in values for b in values))
    assume(planted["mrn"].strip() and len(set(values)) == len(values))
    bundle = make_bundle(planted, born.isoformat(), when.isoformat())

    harbor = run("safe-harbor", bundle)
    assert survivors(harbor, planted) == set()
    age = TODAY.year - born.year - ((TODAY.month, TODAY.day) < (born.month, born.day))
    assert ("birthDate" in only(harbor, "Patient")) is (age <= 89)
    hay = "\x00".join(output_strings(harbor))
    assert born.isoformat() not in hay and when.isoformat() not in hay
    assert {e["resource"]["resourceType"] for e in harbor.bundle["entry"]} == {
        "Patient",
        "Encounter",
        "Observation",
        "DiagnosticReport",
    }

    limited = run("limited-data-set", bundle)
    assert survivors(limited, planted) == {"city", "zip"}
    assert only(limited, "Patient")["address"][0]["postalCode"] == planted["zip"][:5]
    assert only(limited, "Observation")["effectiveDateTime"].startswith(when.isoformat())
    assert only(limited, "Patient")["birthDate"] == born.isoformat()


def test_the_leak_check_can_fail() -> None:
    """The property above is not vacuous: the limited data set's city and ZIP are found."""
    assert survivors(run("limited-data-set", make_bundle(VALUES)), VALUES) == {"city", "zip"}
