"""From a de-identified FHIR Bundle to a model's feature row.

``observations_from_bundle`` flattens Observations (and their components) into
:class:`schemas.ObservationFact`; observations without a usable value or time, or with status
``entered-in-error`` / ``cancelled``, are skipped. ``FeatureExtractor`` then fills each
manifest input from the subject's history as the manifest says (see
:class:`inference.ModelInput`): by default the *latest usable value inside its look-back
window* (``now - window`` to ``now``, inclusive); or the ``min`` / ``max`` of the window; or a
window that ends just before another input's value (``anchor``). Each feature keeps where
its value came from (code, effective time); those times never leave the infer stage.

Units: a value must arrive in the input's UCUM unit; common non-UCUM spellings (``°C``,
``mmHg``, ``bpm``, ``µmol/l``) are normalised, ``[degF]`` is converted to ``Cel``, a unit in
the input's ``other_units`` is converted by its factor, and any other unit makes that value
unusable (treated as absent, never guessed). Naive times are taken as UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from inference._manifest import InputSource, ModelInput, ModelManifest
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
    "mg/dl": "mg/dL",
    "umol/l": "umol/L",
    "\u00b5mol/l": "umol/L",  # micro sign
    "\u03bcmol/l": "umol/L",  # Greek small mu
    "micromol/l": "umol/L",
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
        self._inputs = {spec.name: spec for spec in manifest.inputs}
        self._codes = frozenset((c.system, c.code) for spec in manifest.inputs for c in spec.codes)

    @property
    def max_window(self) -> timedelta:
        """How much history a caller must keep: the longest look-back, anchors included.

        An anchored window ends at its anchor's value, which lies up to the anchor's own
        look-back before now, so the two add up (KDIGO: 24 h + 7 d).
        """
        hours = [self._reach(spec) for spec in self.manifest.inputs if spec.kind != "config"]
        return timedelta(hours=max(hours, default=0.0))

    def _reach(self, spec: ModelInput) -> float:
        own = spec.lookback_hours or 0.0
        return own + (self._reach(self._inputs[spec.anchor]) if spec.anchor else 0.0)

    def extract(
        self,
        message_id: int,
        subject: str,
        history: Iterable[ObservationFact],
        now: datetime,
        config_inputs: Mapping[str, float] | None = None,
    ) -> InferenceRequest | MissingInputs:
        """Each input's value from the history (as its manifest entry says), or what is missing."""
        now = _utc(now)
        by_code: dict[tuple[str, str], list[ObservationFact]] = {}
        for fact in history:
            if (fact.system, fact.code) in self._codes:
                by_code.setdefault((fact.system, fact.code), []).append(fact)
        config = config_inputs or {}
        filled: dict[str, FeatureValue] = {}
        missing: list[str] = []
        for spec in self.manifest.inputs:
            if spec.kind == "config":
                assert spec.default is not None
                filled[spec.name] = FeatureValue(
                    name=spec.name,
                    value=float(config.get(spec.name, spec.default)),
                    source_system=CONFIG_SYSTEM,
                    source_code=spec.name,
                    effective=now,
                )
                continue
            value = self._observed(spec, by_code, now, filled)
            if value is None and spec.fallback in filled:
                value = filled[spec.fallback].model_copy(update={"name": spec.name})
            if value is None:
                missing.append(spec.name)
            else:
                filled[spec.name] = value
        m = self.manifest
        if missing:
            return MissingInputs(m.id, m.version, message_id, subject, missing)
        return InferenceRequest(
            model_id=m.id,
            model_version=m.version,
            message_id=message_id,
            subject=subject,
            features=[filled[spec.name] for spec in m.inputs],
        )

    @staticmethod
    def _observed(
        spec: ModelInput,
        by_code: Mapping[tuple[str, str], list[ObservationFact]],
        now: datetime,
        filled: Mapping[str, FeatureValue],
    ) -> FeatureValue | None:
        """The usable value of the window that the input's ``aggregate`` picks, if any."""
        assert spec.lookback_hours is not None
        lookback = timedelta(hours=spec.lookback_hours)
        if spec.anchor is not None:
            anchor = filled.get(spec.anchor)
            if anchor is None:
                return None
            end = anchor.effective

            def inside(moment: datetime) -> bool:
                return end - lookback <= moment < end

        else:

            def inside(moment: datetime) -> bool:
                return now - lookback <= moment <= now

        best: _Candidate | None = None  # a FeatureValue is built once, for the winner
        for source in spec.codes:
            for fact in by_code.get((source.system, source.code), ()):
                effective = _utc(fact.effective)
                if not inside(effective):
                    continue
                value = _value(spec, source, fact)
                if value is None or not _better(spec, value, effective, best):
                    continue
                best = _Candidate(value, effective, fact)
        if best is None:
            return None
        return FeatureValue(
            name=spec.name,
            value=best.value,
            unit=spec.unit,
            source_system=best.fact.system,
            source_code=best.fact.code,
            effective=best.effective,
        )


class _Candidate(NamedTuple):
    value: float
    effective: datetime
    fact: ObservationFact


def _better(spec: ModelInput, value: float, effective: datetime, best: _Candidate | None) -> bool:
    """Whether a candidate replaces the best so far; ties keep the one seen first."""
    if best is None:
        return True
    if spec.aggregate == "min":
        return value < best.value
    if spec.aggregate == "max":
        return value > best.value
    return effective > best.effective


def _value(spec: ModelInput, source: InputSource, fact: ObservationFact) -> float | None:
    """The fact's value for this input, or None when it cannot be used."""
    if fact.value_code is not None:
        return spec.value_map.get(fact.value_code) if spec.kind in ("flag", "coded") else None
    if fact.value is None or fact.value != fact.value or abs(fact.value) == float("inf"):
        return None
    if spec.kind == "coded":
        return None
    value: float | None
    if spec.kind == "quantity":
        assert spec.unit is not None
        value = _convert(fact.value, _ucum(fact.unit), spec.unit, spec.other_units)
        low, high = spec.valid_range or (-float("inf"), float("inf"))
        return value if value is not None and low <= value <= high else None
    # a flag: the value counts when it arrives in the source's unit (or the source is unitless:
    # a boolean, a yes/no, a score)
    unit = source.unit
    value = fact.value if unit is None else _convert(fact.value, _ucum(fact.unit), unit, {})
    if value is None:
        return None
    if source.flag_below is not None:
        return 1.0 if value < source.flag_below else 0.0
    return 1.0 if value > 0 else 0.0


def _convert(
    value: float, got: str | None, unit: str, other_units: Mapping[str, float]
) -> float | None:
    """``value`` in ``got`` expressed in ``unit``, or None when it cannot be converted."""
    if got == unit:
        return value
    if got is not None and got in other_units:
        return value / other_units[got]
    convert = _CONVERSIONS.get((got, unit)) if got is not None else None
    return convert(value) if convert is not None else None
