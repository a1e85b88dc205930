"""What survives de-identification: per resource type, an allowlist of elements.

Fail closed: an element, resource type, code or value not named here is removed and
reported. Nested data types are allowlisted too, so an unexpected ``text``, ``display``
or extension inside an allowed element is removed as well. Changing a list here changes
what models may see: review it as a privacy decision, not a refactor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Prim:
    """A primitive kept as is if its JSON type fits (and, if given, it is in ``values``)."""

    kind: type[str] | type[bool] | type[float]
    values: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Date:
    """A date/dateTime/instant: shifted by the patient's offset."""


@dataclass(frozen=True)
class BirthDate:
    """Patient.birthDate: shifted, or removed when the age could be over 89."""


@dataclass(frozen=True)
class Ref:
    """A Reference: only ``reference``, rewritten to the de-identified target in the Bundle."""


@dataclass(frozen=True)
class Obj:
    """A complex element: keep only the named children, each by its own rule."""

    children: Mapping[str, Rule] = field(default_factory=dict)


@dataclass(frozen=True)
class FreeText:
    """Free text: removed, or kept after the free-text engine has scrubbed it.

    ``form`` says how the text is held: ``plain`` a string, ``xhtml`` a Narrative div
    (markup dropped, text scrubbed and escaped), ``base64`` an Attachment's data.
    """

    form: str = "plain"


Rule = Prim | Date | BirthDate | Ref | Obj | FreeText


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STR = Prim(str)
NUM = Prim(float)  # JSON numbers: int or float, never bool
BOOL = Prim(bool)

CODING = Obj({"system": STR, "version": STR, "code": STR, "display": STR})
CODEABLE = Obj({"coding": CODING})  # ``text`` is free text: removed
QUANTITY = Obj(
    {
        "value": NUM,
        "comparator": Prim(str, frozenset({"<", "<=", ">=", ">"})),
        "unit": STR,
        "system": STR,
        "code": STR,
    }
)
RANGE = Obj({"low": QUANTITY, "high": QUANTITY})
RATIO = Obj({"numerator": QUANTITY, "denominator": QUANTITY})
PERIOD = Obj({"start": Date(), "end": Date()})
REFERENCE_RANGE = Obj(
    {"low": QUANTITY, "high": QUANTITY, "type": CODEABLE, "appliesTo": CODEABLE, "age": RANGE}
)
_VALUES: dict[str, Rule] = {
    "valueQuantity": QUANTITY,
    "valueCodeableConcept": CODEABLE,
    "valueBoolean": BOOL,
    "valueInteger": NUM,
    "valueRange": RANGE,
    "valueRatio": RATIO,
    "valueDateTime": Date(),
    "valuePeriod": PERIOD,
}
COMPONENT = Obj(
    {
        "code": CODEABLE,
        **_VALUES,
        "dataAbsentReason": CODEABLE,
        "interpretation": CODEABLE,
        "referenceRange": REFERENCE_RANGE,
    }
)

OBSERVATION_STATUS = _words(
    "registered preliminary final amended corrected cancelled entered-in-error unknown"
)
ENCOUNTER_STATUS = _words(
    "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown"
)
REPORT_STATUS = _words(
    "registered partial preliminary final amended corrected appended cancelled "
    "entered-in-error unknown"
)
GENDER = frozenset({"male", "female", "other", "unknown"})

RESOURCES: Mapping[str, Obj] = {
    "Patient": Obj(
        {
            "gender": Prim(str, GENDER),
            "birthDate": BirthDate(),
            "deceasedBoolean": BOOL,
            "deceasedDateTime": Date(),
            "address": Obj({"state": STR}),
        }
    ),
    "Encounter": Obj(
        {
            "status": Prim(str, ENCOUNTER_STATUS),
            "class": CODING,
            "subject": Ref(),
            "period": PERIOD,
        }
    ),
    "Observation": Obj(
        {
            "status": Prim(str, OBSERVATION_STATUS),
            "category": CODEABLE,
            "code": CODEABLE,
            "subject": Ref(),
            "encounter": Ref(),
            "effectiveDateTime": Date(),
            "effectivePeriod": PERIOD,
            "effectiveInstant": Date(),
            "issued": Date(),
            **_VALUES,
            "dataAbsentReason": CODEABLE,
            "interpretation": CODEABLE,
            "referenceRange": REFERENCE_RANGE,
            "component": COMPONENT,
            "hasMember": Ref(),
        }
    ),
    "DiagnosticReport": Obj(
        {
            "status": Prim(str, REPORT_STATUS),
            "category": CODEABLE,
            "code": CODEABLE,
            "subject": Ref(),
            "encounter": Ref(),
            "effectiveDateTime": Date(),
            "effectivePeriod": PERIOD,
            "issued": Date(),
            "result": Ref(),
            "conclusionCode": CODEABLE,
        }
    ),
}

# Free text kept when the engine runs with ``free_text="tag"`` or ``"surrogate"``: these
# children are added to the allowlists above, each scrubbed by the free-text engine. With
# the default ``"remove"`` they stay off the allowlist and are removed, as before.
NARRATIVE = Obj(
    {
        "status": Prim(str, frozenset({"generated", "extensions", "additional", "empty"})),
        "div": FreeText("xhtml"),
    }
)
ANNOTATION = Obj({"text": FreeText()})  # author and time could name or date a person
TEXT_ATTACHMENT = Obj(
    {
        "contentType": Prim(str, frozenset({"text/plain", "text/plain; charset=utf-8"})),
        "data": FreeText("base64"),
        "title": FreeText(),
        "creation": Date(),
    }
)
FREE_TEXT: Mapping[str, Mapping[str, Rule]] = {
    "Patient": {"text": NARRATIVE},
    "Encounter": {"text": NARRATIVE},
    "Observation": {"text": NARRATIVE, "note": ANNOTATION, "valueString": FreeText()},
    "DiagnosticReport": {
        "text": NARRATIVE,
        "conclusion": FreeText(),
        "presentedForm": TEXT_ATTACHMENT,
    },
}


def with_free_text(resources: Mapping[str, Obj]) -> dict[str, Obj]:
    """The allowlists with ``FREE_TEXT`` added (for the scrubbing modes)."""
    return {
        rtype: Obj({**rule.children, **FREE_TEXT.get(rtype, {})})
        for rtype, rule in resources.items()
    }


# Why an element is removed, for the report. Anything else: "fail-closed:not-allowlisted".
_NAMES = "safe-harbor:names"
_GEO = "safe-harbor:geographic"
_FREE = "safe-harbor:free-text"
_IDS = "safe-harbor:identifiers"
REMOVAL_RULES: Mapping[str, str] = {
    "name": _NAMES,
    "contact": _NAMES,
    "display": _NAMES,
    "identifier": _IDS,
    "telecom": "safe-harbor:telecom",
    "address": _GEO,
    "line": _GEO,
    "city": _GEO,
    "district": _GEO,
    "postalCode": _GEO,
    "country": _GEO,
    "location": _GEO,
    "photo": "safe-harbor:photos",
    "text": _FREE,
    "note": _FREE,
    "valueString": _FREE,
    "conclusion": _FREE,
    "comment": _FREE,
    "extension": "fail-closed:extension",
    "modifierExtension": "fail-closed:extension",
    "contained": "fail-closed:contained",
    "meta": "fail-closed:metadata",
}

# Element names that may appear in a report path. A key outside this set is sender-chosen
# and could itself be a value, so the report shows it as ``*``.
_OTHER_KNOWN = _words(
    """
    implicitRules language active maritalStatus multipleBirthBoolean multipleBirthInteger
    communication generalPractitioner managingOrganization link relationship organization
    period use type family given prefix suffix assigner value system rank state
    statusHistory classHistory serviceType priority episodeOfCare basedOn participant
    appointment length reasonCode reasonReference diagnosis account hospitalization
    serviceProvider partOf focus performer specimen device method bodySite derivedFrom
    valueTime valueSampledData valueString resultsInterpreter imagingStudy media
    presentedForm url id resourceType fullUrl request response search timestamp total
    effectiveTiming employer religion race ethnicity
    """
)
# The Safe Harbor category a report entry's rule belongs to (for per-category counts).
CATEGORY_OF_RULE: Mapping[str, str] = {
    _NAMES: "name",
    _GEO: "geographic",
    _FREE: "free-text",
    _IDS: "identifier",
    "safe-harbor:telecom": "telecom",
    "safe-harbor:photos": "photo",
    "safe-harbor:age-over-89": "age",
    "dateshift:per-patient": "date",
    "pseudonym:subject": "identifier",
}

KNOWN_ELEMENTS: frozenset[str] = frozenset(
    {name for rule in RESOURCES.values() for name in rule.children}
    | set(REMOVAL_RULES)
    | _OTHER_KNOWN
    | {name for dt in (CODING, QUANTITY, REFERENCE_RANGE, COMPONENT) for name in dt.children}
    | {name for dt in (NARRATIVE, TEXT_ATTACHMENT) for name in dt.children}
)

# FHIR R4 resource types that a report may name when it drops one; others show as ``*``.
KNOWN_RESOURCE_TYPES = _words(
    """
    Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment
    AppointmentResponse AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure
    Bundle CapabilityStatement CarePlan CareTeam ChargeItem Claim ClaimResponse
    ClinicalImpression Communication CommunicationRequest Composition ConceptMap Condition
    Consent Contract Coverage DetectedIssue Device DeviceDefinition DeviceMetric
    DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference
    Encounter Endpoint EpisodeOfCare FamilyMemberHistory Flag Goal Group
    GuidanceResponse HealthcareService ImagingStudy Immunization ImmunizationEvaluation
    ImmunizationRecommendation Invoice List Location Media Medication
    MedicationAdministration MedicationDispense MedicationRequest MedicationStatement
    MessageHeader NutritionOrder Observation OperationOutcome Organization
    OrganizationAffiliation Parameters Patient Person Practitioner PractitionerRole
    Procedure Provenance Questionnaire QuestionnaireResponse RelatedPerson RequestGroup
    RiskAssessment Schedule ServiceRequest Slot Specimen Subscription Substance Task
    VisionPrescription
    """
)
