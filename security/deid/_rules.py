"""The compiled form of a de-identification profile, and how the report names removals.

A profile (YAML, ``security/deid/profiles/``) is compiled once by ``_profile`` into a
tree of the rules below; the engine walks each resource through that tree for every
message, so no YAML is read per message. Fail closed: an element, extension, resource
type or code that the tree does not name is removed and reported.

The tables here say how a removal is reported. They never decide what is kept: that is
the profile's job, and it is reviewed as a privacy decision.
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
    """A date/dateTime/instant: shifted by the patient's offset, or kept (``shift=False``)."""

    shift: bool = True


@dataclass(frozen=True)
class BirthDate:
    """Patient.birthDate: a ``Date`` that, with ``aggregate``, is replaced by the age
    group "90 or older" when the patient could be over 89."""

    shift: bool = True
    aggregate: bool = True


@dataclass(frozen=True)
class Ref:
    """A Reference: only ``reference``, rewritten to the de-identified target in the Bundle."""


@dataclass(frozen=True)
class PostalCode:
    """A US ZIP code cut to ``digits`` (3 or 5); a ZIP3 in ``restricted`` becomes "000".

    Anything that is not a US ZIP (5 digits, optionally +4) is removed.
    """

    digits: int
    restricted: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Obj:
    """A complex element: keep only the named children, each by its own rule.

    ``text_only``: the element carries base64 free text, so it is kept only when its
    ``contentType`` says text/plain (never scrub bytes we cannot read as text).
    """

    children: Mapping[str, Rule] = field(default_factory=dict)
    text_only: bool = False


@dataclass(frozen=True)
class Extensions:
    """``extension``: only the listed URLs survive, each value by its own rule."""

    by_url: Mapping[str, Obj]


@dataclass(frozen=True)
class FreeText:
    """Free text: removed, or kept after the free-text engine has scrubbed it.

    ``form`` says how the text is held: ``plain`` a string, ``xhtml`` a Narrative div
    (markup dropped, text scrubbed and escaped), ``base64`` an Attachment's data.
    """

    form: str = "plain"


Rule = Prim | Date | BirthDate | Ref | PostalCode | Obj | Extensions | FreeText


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


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

# Elements that carry a direct identifier under both Safe Harbor and the limited data
# set, whatever resource they sit in. A profile that allowlists one is refused at load.
DIRECT_IDENTIFIERS: frozenset[str] = frozenset(
    {"name", "identifier", "telecom", "line", "contact", "photo", "modifierExtension"}
)

# Element names that may appear in a report path. A key outside this set (and outside
# the profile's own element names) is sender-chosen and could itself be a value, so the
# report shows it as ``*``.
KNOWN_ELEMENTS: frozenset[str] = frozenset(REMOVAL_RULES) | _words(
    """
    implicitRules language active maritalStatus multipleBirthBoolean multipleBirthInteger
    communication generalPractitioner managingOrganization link relationship organization
    period use type family given prefix suffix assigner value system rank state
    statusHistory classHistory serviceType priority episodeOfCare basedOn participant
    appointment length reasonCode reasonReference diagnosis account hospitalization
    serviceProvider partOf focus performer specimen device method bodySite derivedFrom
    valueTime valueSampledData valueString resultsInterpreter imagingStudy media
    presentedForm url id resourceType fullUrl request response search timestamp total
    effectiveTiming employer religion race ethnicity gender birthDate deceasedBoolean
    deceasedDateTime status class subject encounter effectiveDateTime effectivePeriod
    effectiveInstant issued valueQuantity valueCodeableConcept valueBoolean valueInteger
    valueRange valueRatio valueDateTime valuePeriod dataAbsentReason interpretation
    referenceRange component hasMember category code result conclusionCode version
    comparator unit low high appliesTo age start end numerator denominator div
    contentType data title creation
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
    "safe-harbor:zip3": "geographic",
    "safe-harbor:zip3-restricted": "geographic",
    "limited-data-set:zip5": "geographic",
    "limited-data-set:dates": "date",
    "fail-closed:not-a-us-zip": "geographic",
    "dateshift:per-patient": "date",
    "pseudonym:subject": "identifier",
}

# FHIR R4 resource types that a report may name when it drops one; others show as ``*``.
# A profile may allowlist only these.
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
