"""DICOM de-identification (PS3.15 Annex E Basic Profile): nothing identifying survives.

Datasets plant a distinctive value in many Table E.1-1 attributes, in nested sequences and
in private tags; the tests write the result with ``dcmwrite`` and search every byte of the
file (and the report) for those values. Expected actions are the rows of PS3.15 Table
E.1-1 (DICOM 2024b), Basic Profile column, with the compound resolutions documented in
``security/deid/dicom/README.md``.
"""

from __future__ import annotations

import copy
import io
import json
import re
import subprocess
import sys
from datetime import date, timedelta
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, UltrasoundImageStorage

from gateway.normalize._datatypes import assigner_system
from security.deid import DeidentificationError, Deidentifier
from security.deid._keyed import date_offset, pseudonym
from security.deid.dicom import TABLE_ROWS, DicomDeidentifier, DicomDeidResult

PKEY = b"p" * 32
DKEY = b"d" * 32
SYSTEM = "urn:id:TESTHOSP"
MRN = "MRN-DCM-771903"
UID_ROOT = "1.2.826.0.1.3680043.10.999."
NEW_UID = re.compile(r"^2\.25\.[1-9]\d{0,38}$")

PLANTED = {
    "PatientName": "Zyxwdicom^Qwertgiven",
    "PatientBirthDate": "19470312",
    "OtherPatientNames": "Otherplanted^Name",
    "PatientAddress": "17 Plantedstreet Plantedville",
    "PatientTelephoneNumbers": "+1-555-867-5309",
    "PatientMotherBirthName": "Mothermaiden",
    "InstitutionName": "Plantedhospital General",
    "InstitutionAddress": "1 Plantedhospital Way",
    "ReferringPhysicianName": "Drplanted^Referrer",
    "PerformingPhysicianName": "Drplanted^Performer",
    "OperatorsName": "Operatorplanted",
    "AccessionNumber": "ACC-9911723",
    "StudyID": "STUDY-88231",
    "StudyDescription": "CT for Zyxwdicom",
    "SeriesDescription": "Series Plantedseries",
    "ImageComments": "Comment Plantedcomment",
    "StationName": "STATIONPLT7",
    "DeviceSerialNumber": "SERIAL-44719",
    "ProtocolName": "Protocol Plantedproto",
    "RequestedProcedureID": "REQ-551902",
    "PositionReferenceIndicator": "Plantedposref",
    "nested_person": "Nestedperson^Planted",
    "nested_text": "Nestedtext plantedvalue",
    "nested_private": "Nestedprivate plantedvalue",
    "private_text": "Privateplanted Name",
    "overlay_comment": "Overlayplanted comment",
    "curve_label": "Curveplanted label",
    "unknown_public": "Unknownpublic planted",
}


def study_uids(study: str) -> dict[str, str]:
    return {
        "StudyInstanceUID": f"{UID_ROOT}{study}.1",
        "SeriesInstanceUID": f"{UID_ROOT}{study}.2",
        "FrameOfReferenceUID": f"{UID_ROOT}{study}.3",
    }


def make_dataset(
    instance: str = "1", study: str = "100", modality: str = "CT", pixels: bool = False
) -> Dataset:
    """A CT instance with a distinctive value planted in many table attributes."""
    ds = Dataset()
    sop_uid = f"{UID_ROOT}{study}.4.{instance}"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "SENDERPLT"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    for keyword, uid in study_uids(study).items():
        setattr(ds, keyword, uid)
    ds.Modality = modality
    ds.Manufacturer = "ACME MEDICAL"
    ds.PatientID = MRN
    ds.IssuerOfPatientID = "TESTHOSP"
    ds.PatientSex = "F"
    ds.PatientAge = "077Y"
    ds.StudyDate = "20200115"
    ds.SeriesDate = "20200115"
    ds.AcquisitionDate = "20200116"
    ds.ContentDate = "20200117"
    ds.StudyTime = "083000"
    ds.AcquisitionDateTime = "20200116093015.123456+0100"
    for keyword, value in PLANTED.items():
        if keyword[0].isupper():
            setattr(ds, keyword, value)
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = f"{UID_ROOT}{study}.4.0"
    ref.add_new(0x00090010, "LO", "PLANTED CREATOR")
    ref.add_new(0x00091001, "LO", PLANTED["nested_private"])
    ds.ReferencedImageSequence = Sequence([ref])
    region = Dataset()
    region.CodeValue = "T-D4000"
    region.CodingSchemeDesignator = "SRT"
    region.CodeMeaning = "Abdomen"
    region.PersonName = PLANTED["nested_person"]
    region.TextValue = PLANTED["nested_text"]
    ds.AnatomicRegionSequence = Sequence([region])
    ds.add_new(0x00290010, "LO", "PLANTED CREATOR")
    ds.add_new(0x00291010, "LO", PLANTED["private_text"])
    private_item = Dataset()
    private_item.PatientName = PLANTED["nested_person"]
    ds.add_new(0x00291020, "SQ", Sequence([private_item]))
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60004000, "LT", PLANTED["overlay_comment"])
    ds.add_new(0x50002500, "LO", PLANTED["curve_label"])
    ds.add_new(0x0018FFF0, "LO", PLANTED["unknown_public"])
    if pixels:
        ds.Rows = ds.Columns = 2
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = b"\x01\x02\x03\x04"
    return ds


def bundled(name: str) -> Dataset:
    """A test file that ships inside the pydicom wheel (no download)."""
    path = get_testdata_file(name, download=False)
    assert isinstance(path, str)
    return pydicom.dcmread(path)


def engine(**kwargs: Any) -> DicomDeidentifier:
    return DicomDeidentifier(PKEY, DKEY, **kwargs)


def written(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    if "TransferSyntaxUID" in getattr(ds, "file_meta", Dataset()):
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def read_back(result: DicomDeidResult) -> Dataset:
    return pydicom.dcmread(io.BytesIO(written(result.dataset)))


def report_text(result: DicomDeidResult) -> str:
    return json.dumps([e.model_dump() for e in result.report])


def all_tags(ds: Dataset) -> list[int]:
    tags: list[int] = []
    for elem in ds:
        tags.append(int(elem.tag))
        if elem.VR == "SQ":
            for item in elem.value:
                tags.extend(all_tags(item))
    return tags


def subject() -> str:
    return pseudonym(PKEY, "v1", SYSTEM, MRN)


def shifted(yyyymmdd: str) -> str:
    days = date_offset(DKEY, subject(), (-365, -1))
    day = date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8])) + timedelta(days)
    return day.strftime("%Y%m%d")


# --- nothing identifying survives ------------------------------------------------------


def test_no_planted_value_survives_in_the_written_file_or_the_report() -> None:
    source = make_dataset()
    result = engine().deidentify(source)
    blob = written(result.dataset)
    text = report_text(result)
    originals = [*PLANTED.values(), MRN, "SENDERPLT", *study_uids("100").values()]
    originals += [source.SOPInstanceUID, "20200115", "20200116", "20200117"]
    for value in originals:
        assert value.encode() not in blob, value
        assert value not in text, value


def test_private_tags_are_removed_at_every_depth() -> None:
    ct = bundled("CT_small.dcm")
    assert any(tag >> 16 & 1 for tag in all_tags(ct))
    for source in (ct, make_dataset()):
        out = engine(default_issuer_system=SYSTEM).deidentify(source).dataset
        assert not [hex(t) for t in all_tags(out) if t >> 16 & 1]


def test_overlays_curves_and_unknown_public_tags_are_removed() -> None:
    out = engine().deidentify(make_dataset()).dataset
    groups = {t >> 16 for t in all_tags(out)}
    assert not groups & {0x5000, 0x6000}
    assert 0x0018FFF0 not in out


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_bundled_instances_lose_their_identifiers_and_keep_their_pixels(name: str) -> None:
    source = bundled(name)
    result = engine(default_issuer_system=SYSTEM).deidentify(source)
    back = read_back(result)
    blob = written(result.dataset)
    keywords = ["PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"]
    keywords += ["SOPInstanceUID", "FrameOfReferenceUID", "StudyDate", "PatientBirthDate"]
    keywords += ["InstitutionName", "ReferringPhysicianName", "StationName", "AccessionNumber"]
    values = [str(source.get(k, "")).strip() for k in keywords]
    kept = str(source.Manufacturer)  # MR_small's InstitutionName is its manufacturer's name
    for value in [v for v in values if len(v) >= 4 and v not in kept]:
        assert value.encode() not in blob
    assert back.SOPClassUID == source.SOPClassUID
    assert back.Modality == source.Modality
    assert back.Manufacturer == source.Manufacturer
    assert (back.pixel_array == source.pixel_array).all()
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID


def test_output_is_marked_de_identified_with_cid_7050_codes() -> None:
    back = read_back(engine(retain_modified_dates=True).deidentify(make_dataset()))
    assert back.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in back.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]
    assert all(i.CodingSchemeDesignator == "DCM" for i in back.DeidentificationMethodCodeSequence)
    assert back.LongitudinalTemporalInformationModified == "MODIFIED"
    basic = read_back(engine().deidentify(make_dataset()))
    assert [i.CodeValue for i in basic.DeidentificationMethodCodeSequence] == ["113100"]
    assert basic.LongitudinalTemporalInformationModified == "REMOVED"


def test_input_dataset_is_not_mutated() -> None:
    source = make_dataset()
    before = copy.deepcopy(source)
    engine().deidentify(source)
    assert source == before
    assert source.file_meta == before.file_meta


# --- the table, resolved -----------------------------------------------------------------

# (keyword, Basic Profile code in PS3.15 Table E.1-1 2024b, what the output holds)
TABLE_CASES = [
    ("AccessionNumber", "Z", "empty"),
    ("PatientBirthDate", "Z", "empty"),
    ("ReferringPhysicianName", "Z", "empty"),
    ("StudyID", "Z", "empty"),
    ("PatientAddress", "X", "absent"),
    ("OtherPatientNames", "X", "absent"),
    ("PerformingPhysicianName", "X", "absent"),
    ("RequestedProcedureID", "X", "absent"),
    ("StudyDescription", "X", "absent"),
    ("InstitutionName", "X/Z/D", "dummy"),
    ("OperatorsName", "X/Z/D", "dummy"),
    ("DeviceSerialNumber", "X/Z/D", "dummy"),
    ("StationName", "X/Z/D", "dummy"),
    ("ProtocolName", "X/D", "dummy"),
    ("SeriesDate", "X/D", "dummy"),
    ("AcquisitionDate", "X/Z", "empty"),
    ("ContentDate", "Z/D", "dummy"),
    ("AcquisitionDateTime", "X/Z/D", "dummy"),
    ("StudyInstanceUID", "U", "uid"),
    ("FrameOfReferenceUID", "U", "uid"),
]


@pytest.mark.parametrize(("keyword", "code", "expected"), TABLE_CASES)
def test_table_actions_under_the_basic_profile(keyword: str, code: str, expected: str) -> None:
    row = next(r for r in TABLE_ROWS if r.tag == tag_for_keyword(keyword))
    assert row.basic == code
    back = read_back(engine().deidentify(make_dataset()))
    if expected == "absent":
        assert keyword not in back
        return
    value = str(back[keyword].value or "")
    if expected == "empty":
        assert value == ""
    elif expected == "uid":
        assert NEW_UID.match(value)
    else:
        assert value and value not in str(make_dataset()[keyword].value)


def test_x_z_u_star_sequences_are_kept_with_their_uids_remapped() -> None:
    source = make_dataset()
    back = read_back(engine().deidentify(source))
    item = back.ReferencedImageSequence[0]
    assert item.ReferencedSOPClassUID == CTImageStorage
    original = source.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    assert item.ReferencedSOPInstanceUID == engine().remap_uid(original)


def test_text_outside_the_table_is_emptied_unless_keep_listed() -> None:
    back = read_back(engine().deidentify(make_dataset()))
    assert back.PositionReferenceIndicator == ""
    region = back.AnatomicRegionSequence[0]
    assert (region.CodeValue, region.CodeMeaning) == ("T-D4000", "Abdomen")
    assert region.TextValue == ""
    assert back.Manufacturer == "ACME MEDICAL"


def test_table_is_the_standards_basic_profile_column() -> None:
    assert len(TABLE_ROWS) == 620  # 2024b, without the private-attributes row
    assert {r.basic for r in TABLE_ROWS} == {
        "X", "Z", "D", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*"
    }  # fmt: skip
    for row in TABLE_ROWS:
        if row.mask == 0xFFFFFFFF:
            assert keyword_for_tag(row.tag), row.name
    repeating = {(r.tag, r.name) for r in TABLE_ROWS if r.mask != 0xFFFFFFFF}
    assert repeating == {
        (0x50000000, "Curve Data"),
        (0x60003000, "Overlay Data"),
        (0x60004000, "Overlay Comments"),
    }


# --- UIDs ----------------------------------------------------------------------------------


def test_uids_map_consistently_within_a_study_and_differently_across_studies() -> None:
    a1 = engine().deidentify(make_dataset("1", "100")).dataset
    a2 = DicomDeidentifier(PKEY, DKEY).deidentify(make_dataset("2", "100")).dataset
    b1 = engine().deidentify(make_dataset("1", "200")).dataset
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert a1[keyword].value == a2[keyword].value
        assert a1[keyword].value != b1[keyword].value
        assert NEW_UID.match(a1[keyword].value)
        assert a1[keyword].value != study_uids("100")[keyword]
    assert a1.SOPInstanceUID != a2.SOPInstanceUID
    assert a1.ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
        a2.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    )
    assert a1.SOPClassUID == CTImageStorage
    assert a1.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert a1.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert a1.file_meta.MediaStorageSOPInstanceUID == a1.SOPInstanceUID


def test_uid_remapping_is_keyed_and_stable_across_processes() -> None:
    uid = f"{UID_ROOT}100.1"
    code = (
        "from security.deid.dicom import DicomDeidentifier as D;"
        f"print(D(b'p' * 32, b'd' * 32).remap_uid('{uid}'))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == engine().remap_uid(uid)
    assert DicomDeidentifier(b"q" * 32, DKEY).remap_uid(uid) != other
    assert len(other) <= 64
    assert engine().remap_uid(CTImageStorage) == CTImageStorage


# --- the patient: pseudonym and dates shared with the FHIR engine --------------------------


def test_patient_id_and_name_become_the_fhir_engines_pseudonym() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": SYSTEM, "value": MRN}],
                },
            },
            {
                "fullUrl": "urn:uuid:2",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
                    "subject": {"reference": "urn:uuid:1"},
                    "effectiveDateTime": "2020-01-15",
                },
            },
        ],
    }
    fhir = Deidentifier(PKEY, DKEY).deidentify(bundle)
    result = engine(retain_modified_dates=True).deidentify(make_dataset())
    assert result.subject == fhir.subject == subject()
    assert result.dataset.PatientID == fhir.subject
    assert str(result.dataset.PatientName) == fhir.subject
    obs = next(
        e["resource"]
        for e in fhir.bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
    )
    assert result.dataset.StudyDate == obs["effectiveDateTime"].replace("-", "")
    assert result.identifiers == [{"system": SYSTEM, "value": MRN}]


def test_patient_name_can_be_emptied() -> None:
    out = engine(patient_name="empty").deidentify(make_dataset()).dataset
    assert str(out.PatientName) == ""


@pytest.mark.parametrize(
    ("issuer", "universal", "id_type"),
    [("TESTHOSP", "", ""), ("St Elsewhere", "", ""), ("", "1.2.826.0.1.999", "ISO")],
)
def test_issuer_system_matches_the_hl7_normalizer(
    issuer: str, universal: str, id_type: str
) -> None:
    ds = make_dataset()
    del ds.IssuerOfPatientID
    if issuer:
        ds.IssuerOfPatientID = issuer
    if universal:
        qualifier = Dataset()
        qualifier.UniversalEntityID = universal
        qualifier.UniversalEntityIDType = id_type
        ds.IssuerOfPatientIDQualifiersSequence = Sequence([qualifier])
    expected = assigner_system(issuer, universal, id_type)
    assert expected is not None
    assert engine().issuer_system(ds) == expected
    assert engine().deidentify(ds).subject == pseudonym(PKEY, "v1", expected, MRN)


def test_configured_issuer_systems_and_default_apply() -> None:
    ds = make_dataset()
    mapped = engine(issuer_systems={"TESTHOSP": "urn:oid:1.2.3.4.mrn"})
    assert mapped.deidentify(ds).subject == pseudonym(PKEY, "v1", "urn:oid:1.2.3.4.mrn", MRN)
    del ds.IssuerOfPatientID
    assert engine(default_issuer_system=SYSTEM).deidentify(ds).subject == subject()


def test_dates_shift_by_the_patients_offset_with_the_modified_dates_option() -> None:
    out = engine(retain_modified_dates=True).deidentify(make_dataset()).dataset
    assert out.StudyDate == shifted("20200115")
    assert out.SeriesDate == shifted("20200115")
    assert out.AcquisitionDate == shifted("20200116")
    assert out.ContentDate == shifted("20200117")
    assert out.AcquisitionDateTime == shifted("20200116") + "093015.123456+0100"
    assert out.StudyTime == "083000"  # whole-day shift: the time of day is kept
    assert out.PatientBirthDate == ""  # Z in the table, and the option does not cover it
    assert -365 <= (date.fromisoformat(out.StudyDate) - date(2020, 1, 15)).days <= -1


def test_unparseable_dates_fall_back_to_the_basic_action() -> None:
    ds = make_dataset()
    with pytest.warns(UserWarning):  # pydicom warns about the invalid DA on assignment
        ds.SeriesDate = "2020XX15"
    result = engine(retain_modified_dates=True).deidentify(ds)
    assert result.dataset.SeriesDate == "19000101"
    assert any(e.rule == "fail-closed:unparseable-date" for e in result.report)


@pytest.mark.parametrize(
    ("age", "expected"), [("089Y", "089Y"), ("090Y", "090Y"), ("104Y", "090Y")]
)
def test_ages_over_89_are_generalised_when_characteristics_are_retained(
    age: str, expected: str
) -> None:
    ds = make_dataset()
    ds.PatientAge = age
    out = engine(retain_patient_characteristics=True).deidentify(ds).dataset
    assert out.PatientAge == expected
    assert out.PatientSex == "F"
    assert "PatientAge" not in engine().deidentify(ds).dataset


# --- pixels --------------------------------------------------------------------------------


def test_burned_in_annotation_is_refused_by_default() -> None:
    us = make_dataset(modality="US", pixels=True)
    us.SOPClassUID = UltrasoundImageStorage
    with pytest.raises(DeidentificationError) as err:
        engine().deidentify(us)
    assert "burned-in-assumed" in str(err.value)
    ct = make_dataset(pixels=True)
    ct.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationError, match="burned-in-annotation"):
        engine().deidentify(ct)
    us.BurnedInAnnotation = "NO"
    assert engine().deidentify(us).burned_in_annotation is False
    assert engine().deidentify(make_dataset(pixels=True)).burned_in_annotation is False


def test_burned_in_pixels_can_be_flagged_or_removed() -> None:
    us = make_dataset(modality="US", pixels=True)
    flagged = engine(burned_in="flag").deidentify(us)
    assert flagged.burned_in_annotation is True
    assert "PixelData" in flagged.dataset
    removed = engine(burned_in="remove_pixels").deidentify(us)
    assert removed.burned_in_annotation is True
    assert "PixelData" not in removed.dataset
    assert ("PixelData", "removed") in {(e.path, e.action) for e in removed.report}


# --- errors and the report -----------------------------------------------------------------


def test_missing_patient_id_or_issuer_is_refused_without_echoing_values() -> None:
    ds = make_dataset()
    del ds.IssuerOfPatientID
    with pytest.raises(DeidentificationError) as err:
        engine().deidentify(ds)
    assert MRN not in str(err.value)
    ds.PatientID = ""
    with pytest.raises(DeidentificationError, match="PatientID"):
        engine(default_issuer_system=SYSTEM).deidentify(ds)


def test_report_names_tags_actions_and_rules_only() -> None:
    result = engine().deidentify(make_dataset())
    entries = {(e.path, e.action, e.rule) for e in result.report}
    assert ("PatientAddress", "removed", "annex-e:X") in entries
    assert ("InstitutionName", "removed", "annex-e:X/Z/D->D") in entries
    assert ("StudyInstanceUID", "pseudonymized", "annex-e:U") in entries
    assert ("PatientID", "pseudonymized", "pseudonym:subject") in entries
    assert ("(0029,1010)", "removed", "annex-e:private") in entries
    assert ("ReferencedImageSequence.(0009,1001)", "removed", "annex-e:private") in entries
    assert ("PositionReferenceIndicator", "removed", "fail-closed:text-not-allowlisted") in entries
    assert ("(0018,FFF0)", "removed", "fail-closed:unknown-element") in entries


def test_safe_private_allowlist_keeps_only_listed_elements() -> None:
    ds = make_dataset()
    ds.add_new(0x00291011, "LO", "SAFEVALUE")
    out = engine(safe_private=[("PLANTED CREATOR", 0x0029, 0x11)]).deidentify(ds).dataset
    assert out[0x00291011].value == "SAFEVALUE"
    assert out[0x00290010].value == "PLANTED CREATOR"
    assert 0x00291010 not in out
    assert 0x00091001 not in out.ReferencedImageSequence[0]


# --- property: any table attribute, anywhere ------------------------------------------------

_PLANTABLE = frozenset({"AE", "CS", "DA", "DT", "TM", "LO", "LT", "PN", "SH", "ST"})
_PLANTABLE |= {"UC", "UT", "UR", "UI", "OB", "UN", "SQ"}
_ROWS = [
    r
    for r in TABLE_ROWS
    if r.mask == 0xFFFFFFFF
    and r.tag >> 16 not in (0x0000, 0x0002, 0xFFFA, 0xFFFC)
    and dictionary_VR(r.tag) in _PLANTABLE
]
_TOKEN = st.text("ABCDEFGHIJKLMNOPRSTUVWXYZ", min_size=9, max_size=9).map(lambda s: "Q" + s)


def _planted_value(vr: str, token: str, n: int) -> Any:
    if vr == "DA":
        return (date(1950, 1, 1) + timedelta(days=n)).strftime("%Y%m%d")
    if vr == "DT":
        return (date(1950, 1, 1) + timedelta(days=n)).strftime("%Y%m%d") + "101112.131415"
    if vr == "TM":
        return f"{n % 24:02d}{n % 60:02d}17.{n:06d}"
    if vr == "UI":
        return f"{UID_ROOT}7.{n}"
    if vr in ("OB", "UN"):
        return token.encode()
    return token


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    planted=st.lists(
        st.tuples(
            st.sampled_from(_ROWS),
            _TOKEN,
            st.integers(1, 25000),
            st.sampled_from(["top", "ReferencedImageSequence", "AnatomicRegionSequence"]),
        ),
        min_size=1,
        max_size=12,
        unique_by=lambda p: p[0].tag,
    )
)
def test_values_planted_in_random_table_attributes_never_survive(
    planted: list[tuple[Any, str, int, str]],
) -> None:
    ds = make_dataset()
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = f"{UID_ROOT}9.9"
    searched: list[bytes] = []
    for row, token, n, where in planted:
        vr = dictionary_VR(row.tag)
        target = ds if where == "top" else ds[where].value[0]
        if vr == "SQ":
            item = Dataset()
            item.ReferringPhysicianName = token
            item.add_new(0x00110010, "LO", "PLANTED CREATOR")
            item.add_new(0x00111001, "LO", token + "P")
            target.add(DataElement(row.tag, "SQ", Sequence([item])))
            searched += [token.encode(), (token + "P").encode()]
            continue
        value = _planted_value(vr, token, n)
        target.add(DataElement(row.tag, vr, value))
        searched.append(value if isinstance(value, bytes) else value.encode())
    result = engine(default_issuer_system=SYSTEM).deidentify(ds)
    blob = written(result.dataset)
    text = report_text(result).encode()
    for value in searched:
        assert value not in blob
        assert value not in text
    pydicom.dcmread(io.BytesIO(blob))  # still a readable file
