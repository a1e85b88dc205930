"""Inference: signed model bundles, sandboxed ONNX scoring, and advisories.

What this package offers the infer stage:

- bundles: ``sign_bundle`` / ``load_bundle`` (Ed25519 over the files' SHA-256, refusal with
  :class:`BundleRejected`), ``ModelBundle`` (verified bytes held in memory) and
  ``ModelManifest`` (inputs as coded FHIR features, outputs -> advisory mapping);
- reference models: ``build_news2_bundle`` / ``ensure_reference_bundles`` (NEWS2, RCP 2017,
  as a plain ONNX graph, ``build_news2_model``, columns ``NEWS2_COLUMNS``);
- features: ``observations_from_bundle`` (de-identified FHIR Bundle -> facts) and
  ``FeatureExtractor`` (latest value per input in its window -> ``InferenceRequest`` or
  ``MissingInputs``);
- the sandbox: ``Sandbox`` (one worker process per model: no network, resource limits,
  per-call deadline with restart and one retry; ``SandboxError`` when that fails);
- ``InferenceEngine``: every bundle in a directory, one sandbox each, batched ``score``;
- ``build_advisories``: outputs -> ``schemas.Advisory`` with FHIR R4 Observation,
  RiskAssessment and Provenance, all preliminary and pseudonymous.

Nothing here sees PHI: inputs are de-identified facts keyed by the subject's pseudonym.
"""

from inference._advisory import build_advisories, resource_id
from inference._bundle import ModelBundle, key_id, load_bundle, sign_bundle
from inference._engine import InferenceEngine
from inference._errors import BundleRejected, InferenceError, SandboxError, UnknownModel
from inference._features import FeatureExtractor, MissingInputs, observations_from_bundle
from inference._manifest import AdvisoryMapping, Code, InputSource, ModelInput, ModelManifest
from inference._news2 import (
    NEWS2_BAND_LABELS,
    NEWS2_COLUMNS,
    NEWS2_OUTPUTS,
    build_news2_model,
)
from inference._reference import build_news2_bundle, ensure_reference_bundles, news2_manifest
from inference._sandbox import Sandbox, SandboxLimits

__all__ = [
    "NEWS2_BAND_LABELS",
    "NEWS2_COLUMNS",
    "NEWS2_OUTPUTS",
    "AdvisoryMapping",
    "BundleRejected",
    "Code",
    "FeatureExtractor",
    "InferenceEngine",
    "InferenceError",
    "InputSource",
    "MissingInputs",
    "ModelBundle",
    "ModelInput",
    "ModelManifest",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "UnknownModel",
    "build_advisories",
    "build_news2_bundle",
    "build_news2_model",
    "ensure_reference_bundles",
    "key_id",
    "load_bundle",
    "news2_manifest",
    "observations_from_bundle",
    "resource_id",
    "sign_bundle",
]
