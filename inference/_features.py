"""From a de-identified FHIR Bundle to a model's feature row.

``observations_from_bundle`` flattens Observations (and their components) into
:class:`schemas.ObservationFact`; observations without a usable value or time, or with status
``entered-in-error`` / ``cancelled``, are skipped. ``FeatureExtractor`` then fills each
manifest input with the *latest usable value inside its look-back window* (``now - window``
to ``now``, inclusive), keeping where each value came from (code, effective time).

Units: a value must arrive in the input's UCUM unit; common non-UCUM spellings (``°C``,
``mmHg``, ``bpm``) are normalised, ``[degF]`` is converted to ``Cel``, and any other unit
makes that value unusable (treated as absent, never guessed). Naive times are taken as UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from inference._manifest import ModelInput, ModelManifest
from schemas import FeatureValue, InferenceRequest, ObservationFact

CONFIG_SYSTEM = "urn:wardgate:config"
_SKIP_STATUS = frozenset({"entered-in-error", "cancelled"})

# spellings seen in HL7 v2 OBX-6 and FHIR unit text -> UCUM code
_UNIT_ALIASES = {
    "°c": "Cel",
    "degc": "Cel",
    "cel": "Cel",
    "°f": "[degF]",
    "degf": "[degF]",
    "[degf]": "[degF]",
    "mmhg": "mm[Hg]",
    "mm[hg]": "mm[Hg]",
    "bpm": "/min",
    "beats/min": "/min",
    "breaths/min": "/min",
    "{beats}/min": "/min",
    "{breaths}/min": "/min",
    "/min": "/min",
    "1/min": "/min",
    "%": "%",
    "l/min": "L/min",
}
_CONVERSIONS: dict[tuple[str, str], Callable[[float], float]] = {
    ("[degF]", "Cel"): lambda f: (f - 32.0) * 5.0 / 9.0,
}


def _ucum(unit: str | None) -> str | None:
    if unit is None:
        return None
    return _UNIT_ALIASES.get(unit.strip().lower(), unit.strip())


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_time(resource: Mapping[str, Any]) -> datetime | None:
    period = resource.get("effectivePeriod") or {}
    raw = (
        resource.get("effectiveDateTime")
        or resource.get("effectiveInstant")
        or period.get("end")
        or period.get("start")
    )
    if not isinstance(raw, str) or "T" not in raw:  # a bare date is no time for a window
        return None
    try:
        return _utc(datetime.fromisoformat(raw))
    except ValueError:
        return None


def _fact(
    coding: Mapping[str, Any], holder: Mapping[str, Any], effective: datetime
) -> ObservationFact | None:
    system, code = coding.get("system"), coding.get("code")
    if not isinstance(system, str) or not isinstance(code, str):
        return None
    if "valueQuantity" in holder:
        quantity = holder["valueQuantity"] or {}
        value = quantity.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        unit = quantity.get("code") or quantity.get("unit")
        return ObservationFact(
            system=system, code=code, value=float(value), unit=unit, effective=effective
        )
    if "valueInteger" in holder and not isinstance(holder["valueInteger"], bool):
        value = holder["valueInteger"]
        return ObservationFact(system=system, code=code, value=float(value), effective=effective)
    if isinstance(holder.get("valueBoolean"), bool):
        value = 1.0 if holder["valueBoolean"] else 0.0
        return ObservationFact(system=system, code=code, value=value, effective=effective)
    codings = (holder.get("valueCodeableConcept") or {}).get("coding") or []
    if codings and isinstance(codings[0].get("code"), str):
        return ObservationFact(
            system=system, code=code, value_code=codings[0]["code"], effective=effective
        )
    return None


def observations_from_bundle(bundle: Mapping[str, Any]) -> list[ObservationFact]:
    """Every usable coded value in the Bundle's Observations, one fact per coding."""
    facts: list[ObservationFact] = []
    for entry in bundle.get("entry") or []:
        resource = (entry or {}).get("resource") or {}
        if resource.get("resourceType") != "Observation":
            continue
        if resource.get("status") in _SKIP_STATUS:
            continue
        effective = _parse_time(resource)
        if effective is None:
            continue
        for holder in [resource, *(resource.get("component") or [])]:
            for coding in (holder.get("code") or {}).get("coding") or []:
                fact = _fact(coding, holder, effective)
                if fact is not None:
                    facts.append(fact)
    return facts


@dataclass(frozen=True)
class MissingInputs:
    """No feature row: these inputs had no usable value in their window (names only)."""

    model_id: str
    model_version: str
    message_id: int
    subject: str
    names: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "missing inputs: " + ", ".join(self.names)


class FeatureExtractor:
    """Fills a manifest's inputs from a subject's observation history."""

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self._by_code: dict[tuple[str, str], list[tuple[ModelInput, str | None]]] = {}
        for spec in manifest.inputs:
            for source in spec.codes:
                unit = source.unit if source.unit is not None else spec.unit
                self._by_code.setdefault((source.system, source.code), []).append((spec, unit))

    @property
    def max_window(self) -> timedelta:
        """The longest look-back of any input: how much history a caller must keep."""
        hours = [i.lookback_hours for i in self.manifest.inputs if i.lookback_hours is not None]
        return timedelta(hours=max(hours, default=0.0))

    def extract(
        self,
        message_id: int,
        subject: str,
        history: Iterable[ObservationFact],
        now: datetime,
        config_inputs: Mapping[str, float] | None = None,
    ) -> InferenceRequest | MissingInputs:
        """Latest usable value of each input within its look-back window, or what is missing."""
        now = _utc(now)
        best: dict[str, FeatureValue] = {}
        for fact in history:
            for spec, unit in self._by_code.get((fact.system, fact.code), ()):
                assert spec.lookback_hours is not None
                effective = _utc(fact.effective)
                if not now - timedelta(hours=spec.lookback_hours) <= effective <= now:
                    continue
                value = _value(spec, unit, fact)
                if value is None:
                    continue
                current = best.get(spec.name)
                if current is None or effective > current.effective:
                    best[spec.name] = FeatureValue(
                        name=spec.name,
                        value=value,
                        unit=spec.unit,
                        source_system=fact.system,
                        source_code=fact.code,
                        effective=effective,
                    )
        config = config_inputs or {}
        features: list[FeatureValue] = []
        missing: list[str] = []
        for spec in self.manifest.inputs:
            if spec.kind == "config":
                assert spec.default is not None
                value = float(config.get(spec.name, spec.default))
                features.append(
                    FeatureValue(
                        name=spec.name,
                        value=value,
                        source_system=CONFIG_SYSTEM,
                        source_code=spec.name,
                        effective=now,
                    )
                )
            elif spec.name in best:
                features.append(best[spec.name])
            else:
                missing.append(spec.name)
        m = self.manifest
        if missing:
            return MissingInputs(m.id, m.version, message_id, subject, missing)
        return InferenceRequest(
            model_id=m.id,
            model_version=m.version,
            message_id=message_id,
            subject=subject,
            features=features,
        )


def _value(spec: ModelInput, unit: str | None, fact: ObservationFact) -> float | None:
    """The fact's value for this input, or None when it cannot be used."""
    if fact.value_code is not None:
        return spec.value_map.get(fact.value_code) if spec.kind in ("flag", "coded") else None
    if fact.value is None or fact.value != fact.value or abs(fact.value) == float("inf"):
        return None
    if spec.kind == "coded":
        return None
    if unit is None:  # unitless source (boolean / yes-no): only flags take it
        return (1.0 if fact.value > 0 else 0.0) if spec.kind == "flag" else None
    got = _ucum(fact.unit)
    if got == unit:
        value = fact.value
    elif (got, unit) in _CONVERSIONS:
        value = _CONVERSIONS[(got, unit)](fact.value)  # type: ignore[index]
    else:
        return None
    if spec.kind == "flag":
        return 1.0 if value > 0 else 0.0
    return value
