"""The model manifest: what a model reads (coded FHIR features) and what its outputs mean.

A manifest is data, signed with the model. It tells the feature extractor which coded
observations fill each input column and in which unit, and tells the advisory builder
which output is the score, which the risk band, and which code the written result carries.
The ONNX graph takes one float32 tensor ``[N, len(inputs)]`` whose columns follow
``inputs`` in order.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FORMAT: Literal["wardgate-model/1"] = "wardgate-model/1"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"


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
    own unit (e.g. an oxygen flow rate in ``L/min`` filling an on-oxygen flag).
    """

    unit: str | None = None


InputKind = Literal["quantity", "flag", "coded", "config"]


class ModelInput(_Frozen):
    """One input column.

    kinds:
    - ``quantity``: the numeric value, in ``unit`` (UCUM);
    - ``flag``: 0/1; a numeric value counts as 1 when > 0 (e.g. oxygen flow), a boolean as
      itself, a coded value through ``value_map``;
    - ``coded``: a coded value mapped through ``value_map`` (unknown codes are unusable);
    - ``config``: not observed; set per patient by configuration, else ``default``.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    kind: InputKind
    description: str = ""
    codes: list[InputSource] = Field(default_factory=list)
    unit: str | None = None
    lookback_hours: float | None = Field(default=None, gt=0)
    value_map: dict[str, float] = Field(default_factory=dict)
    default: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelInput:
        if self.kind == "config":
            if self.codes or self.default is None:
                raise ValueError(f"config input {self.name}: no codes, and a default is required")
        else:
            if not self.codes or self.lookback_hours is None:
                raise ValueError(f"input {self.name}: codes and lookback_hours are required")
        if self.kind == "quantity" and self.unit is None:
            raise ValueError(f"quantity input {self.name}: a UCUM unit is required")
        if self.kind == "coded" and not self.value_map:
            raise ValueError(f"coded input {self.name}: value_map is required")
        return self


class AdvisoryMapping(_Frozen):
    """How outputs become an advisory: score, band (code -> label), per-parameter scores."""

    kind: Literal["risk", "issue", "observation"] = "risk"
    score_output: str
    band_output: str
    band_labels: dict[int, str]
    component_outputs: dict[str, str] = Field(
        default_factory=dict, description="output name -> parameter name, for explanations"
    )
    observation_code: Code = Field(description="code of the written score Observation")


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
        mapped = {self.advisory.score_output, self.advisory.band_output}
        mapped |= set(self.advisory.component_outputs)
        if not mapped <= set(self.outputs):
            raise ValueError("advisory mapping names outputs the model does not declare")
        return self

    @property
    def column_names(self) -> list[str]:
        """Input names in column order of the ONNX input tensor."""
        return [i.name for i in self.inputs]
