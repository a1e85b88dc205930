"""The model manifest: what a model reads (coded FHIR features) and what its outputs mean.

A manifest is data, signed with the model. It tells the feature extractor which coded
observations fill each input column, in which unit, and how a subject's history within a
window becomes one number; and it tells the advisory builder which output is the score,
which the risk band, which code the written result carries and how to explain it. The ONNX
graph takes one float32 tensor ``[N, len(inputs)]`` whose columns follow ``inputs`` in order.

Windows and aggregates (see :class:`ModelInput`): by default an input is the *latest* value
within ``lookback_hours`` before the moment of scoring. ``aggregate`` picks the ``min`` or
``max`` instead, and ``anchor`` moves the window to end just before another input's value,
so a model can compare the latest result with its own history: KDIGO's baseline is
``aggregate="min"``, ``anchor="creatinine"``, ``lookback_hours=168`` (the lowest creatinine
in the 7 days before the latest one).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FORMAT: Literal["wardgate-model/1"] = "wardgate-model/1"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
SCORE_SYSTEM = "https://wardgate.dev/CodeSystem/score"
"""Wardgate's local code system for scores no standard terminology codes (qSOFA, KDIGO)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Code(_Frozen):
    """A coding: terminology system URI and code."""

    system: str
    code: str
    display: str | None = None


class InputSource(Code):
    """One observation code that can fill an input.

    ``unit`` is the UCUM unit this source arrives in when it differs from the input's
    own unit (e.g. an oxygen flow rate in ``L/min`` filling an on-oxygen flag, a creatinine
    in ``umol/L`` filling a ``mg/dL`` input: quantities are converted to the input's unit).

    ``flag_below``: for a ``flag`` input, a numeric value from this source counts as 1 when
    it is below this bound instead of when it is above 0 (GCS total < 15 = altered
    mentation).
    """

    unit: str | None = None
    flag_below: float | None = None


InputKind = Literal["quantity", "flag", "coded", "config"]
Aggregate = Literal["latest", "min", "max"]


class ModelInput(_Frozen):
    """One input column.

    kinds:
    - ``quantity``: the numeric value, in ``unit`` (UCUM); a value arriving in one of
      ``other_units`` is converted (``{"umol/L": 88.4}``: 1 mg/dL = 88.4 umol/L, so a
      value in umol/L is divided by 88.4), ``[degF]`` to ``Cel``; any other unit is unusable;
    - ``flag``: 0/1; a numeric value counts as 1 when > 0 (e.g. oxygen flow), a boolean as
      itself, a coded value through ``value_map``;
    - ``coded``: a coded value mapped through ``value_map`` (unknown codes are unusable);
    - ``config``: not observed; set per patient by configuration, else ``default``.

    Which value of the subject's history (observed kinds):
    - the window is ``lookback_hours`` ending at the moment of scoring, both ends included;
      with ``anchor`` (the name of an earlier ``latest`` input) it is the ``lookback_hours``
      *strictly before* the time of the value that filled that input, so a value is never
      compared with itself;
    - ``aggregate``: ``latest`` (default) the most recent usable value in the window, ``min``
      / ``max`` the lowest / highest one;
    - ``fallback``: an earlier input whose value this one takes when its window holds no
      usable value (no earlier creatinine in 48 h: the latest itself, i.e. no rise); without
      one, an empty window makes the input missing and the row is not built;
    - ``valid_range``: ``[low, high]`` in ``unit``; a value outside is implausible and
      unusable, as if absent (a creatinine of 0 must not become an infinite ratio).
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    kind: InputKind
    description: str = ""
    codes: list[InputSource] = Field(default_factory=list)
    unit: str | None = None
    other_units: dict[str, float] = Field(default_factory=dict)
    lookback_hours: float | None = Field(default=None, gt=0)
    value_map: dict[str, float] = Field(default_factory=dict)
    default: float | None = None
    aggregate: Aggregate = "latest"
    anchor: str | None = None
    fallback: str | None = None
    valid_range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelInput:
        if self.kind == "config":
            if self.codes or self.default is None:
                raise ValueError(f"config input {self.name}: no codes, and a default is required")
            if self.aggregate != "latest" or self.anchor or self.fallback or self.valid_range:
                raise ValueError(f"config input {self.name}: no history options")
        else:
            if not self.codes or self.lookback_hours is None:
                raise ValueError(f"input {self.name}: codes and lookback_hours are required")
        if self.kind == "quantity" and self.unit is None:
            raise ValueError(f"quantity input {self.name}: a UCUM unit is required")
        if self.kind == "coded" and not self.value_map:
            raise ValueError(f"coded input {self.name}: value_map is required")
        if (self.other_units or self.valid_range is not None) and self.kind != "quantity":
            raise ValueError(f"input {self.name}: other_units and valid_range are for quantities")
        if any(not factor > 0 for factor in self.other_units.values()):
            raise ValueError(f"input {self.name}: other_units factors must be > 0")
        if self.valid_range is not None and not self.valid_range[0] <= self.valid_range[1]:
            raise ValueError(f"input {self.name}: valid_range must be [low, high]")
        if any(c.flag_below is not None for c in self.codes) and self.kind != "flag":
            raise ValueError(f"input {self.name}: flag_below applies to flag inputs only")
        return self


PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)(?::(\.[0-9]f))?\}")


class Explanation(_Frozen):
    """One explanation line, written when output ``when`` is > 0.

    ``text`` names the input that drove the result; it may show outputs as ``{name}`` or
    ``{name:.2f}`` (any ``.Nf``) placeholders, and nothing else (no patient times exist in
    outputs, so none can appear here).
    """

    when: str
    text: str = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _only_placeholders(self) -> Explanation:
        if "{" in PLACEHOLDER.sub("", self.text) or "}" in PLACEHOLDER.sub("", self.text):
            raise ValueError("explanation text: braces only as {output} or {output:.Nf}")
        return self

    @property
    def placeholders(self) -> list[tuple[str, str]]:
        """``(output name, format spec)`` of each placeholder in ``text``."""
        return [(m.group(1), m.group(2) or "") for m in PLACEHOLDER.finditer(self.text)]


class AdvisoryMapping(_Frozen):
    """How outputs become an advisory: score, band (code -> label) and the explanation.

    The explanation lists, for NEWS2-like scores, ``parameter=sub-score`` for every
    ``component_outputs`` entry above 0 (largest first), then one line per ``explanations``
    rule that fired (in order); ``explain_none`` when nothing did.
    """

    kind: Literal["risk", "issue", "observation"] = "risk"
    score_output: str
    band_output: str
    band_labels: dict[int, str]
    component_outputs: dict[str, str] = Field(
        default_factory=dict, description="output name -> parameter name, for explanations"
    )
    explanations: list[Explanation] = Field(default_factory=list)
    explain_none: str = "all parameters scored 0"
    observation_code: Code = Field(
        description="code of the written score Observation and of the RiskAssessment"
    )


class ModelManifest(_Frozen):
    """``manifest.json`` of a bundle."""

    format: Literal["wardgate-model/1"] = MANIFEST_FORMAT
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
    description: str
    reference: str = ""
    onnx_input: str = "features"
    inputs: list[ModelInput] = Field(min_length=1)
    outputs: list[str]
    advisory: AdvisoryMapping

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        names = self.column_names
        if len(set(names)) != len(names):
            raise ValueError("input names must be unique")
        earlier: dict[str, ModelInput] = {}
        for spec in self.inputs:
            anchor = earlier.get(spec.anchor) if spec.anchor else None
            if spec.anchor and (
                anchor is None
                or anchor.kind == "config"
                or anchor.aggregate != "latest"
                or anchor.anchor is not None
            ):
                raise ValueError(
                    f"input {spec.name}: anchor must name an earlier observed latest input"
                )
            fallback = earlier.get(spec.fallback) if spec.fallback else None
            if spec.fallback and (
                fallback is None or (fallback.kind, fallback.unit) != (spec.kind, spec.unit)
            ):
                raise ValueError(
                    f"input {spec.name}: fallback must name an earlier input of its kind and unit"
                )
            earlier[spec.name] = spec
        mapped = {self.advisory.score_output, self.advisory.band_output}
        mapped |= set(self.advisory.component_outputs)
        for rule in self.advisory.explanations:
            mapped |= {rule.when, *(name for name, _ in rule.placeholders)}
        if not mapped <= set(self.outputs):
            raise ValueError("advisory mapping names outputs the model does not declare")
        return self

    @property
    def column_names(self) -> list[str]:
        """Input names in column order of the ONNX input tensor."""
        return [i.name for i in self.inputs]


def loinc(code: str, display: str, unit: str | None = None) -> InputSource:
    """A LOINC source; ``unit`` when it arrives in another unit than the input's."""
    return InputSource(system=LOINC, code=code, display=display, unit=unit)
