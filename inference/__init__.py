"""Inference: signed model bundles, sandboxed ONNX scoring, and advisories.

What this package offers the infer stage:

- bundles: ``sign_bundle`` / ``load_bundle`` (Ed25519 over the files' SHA-256, refusal with
  :class:`BundleRejected`), ``ModelBundle`` (verified bytes held in memory) and
  ``ModelManifest`` (inputs as coded FHIR features, outputs -> advisory mapping);
- reference models, each a plain ONNX graph with its manifest: NEWS2 (RCP 2017,
  ``build_news2_model``, ``news2_manifest``), qSOFA (Singer et al., JAMA 2016,
  ``build_qsofa_model``, ``qsofa_manifest``) and KDIGO AKI stage from creatinine history
  (KDIGO 2012, ``build_kdigo_model``, ``kdigo_manifest``); ``build_*_bundle`` and
  ``ensure_reference_bundles`` write and sign them;
- features: ``observations_from_bundle`` (de-identified FHIR Bundle -> facts) and
  ``FeatureExtractor`` (per input, the latest / min / max value of its window, which may
  end just before another input's value -> ``InferenceRequest`` or ``MissingInputs``);
- the sandbox: ``Sandbox`` (one worker process per model: no network, resource limits,
  per-call deadline with restart and one retry; ``SandboxError`` when that fails;
  ``run`` waits, ``submit`` returns a ``Pending`` so that calls can be in flight);
- ``InferenceEngine``: every bundle in a directory, one sandbox each, batched ``score``,
  and ``score_models`` (several models' batches, their workers scoring side by side);
- ``build_advisories``: outputs -> ``schemas.Advisory`` with FHIR R4 Observation,
  RiskAssessment and Provenance, all preliminary and pseudonymous.

Nothing here sees PHI: inputs are de-identified facts keyed by the subject's pseudonym.
"""

from inference._advisory import build_advisories, resource_id
from inference._bundle import ModelBundle, key_id, load_bundle, sign_bundle
from inference._engine import InferenceEngine
from inference._errors import BundleRejected, InferenceError, SandboxError, UnknownModel
from inference._features import FeatureExtractor, MissingInputs, observations_from_bundle
from inference._kdigo import (
    KDIGO_BAND_LABELS,
    KDIGO_CODE,
    KDIGO_COLUMNS,
    KDIGO_OUTPUTS,
    UMOL_PER_MG_DL,
    build_kdigo_model,
    kdigo_manifest,
)
from inference._manifest import (
    SCORE_SYSTEM,
    AdvisoryMapping,
    Code,
    Explanation,
    InputSource,
    ModelInput,
    ModelManifest,
)
from inference._news2 import (
    NEWS2_BAND_LABELS,
    NEWS2_COLUMNS,
    NEWS2_OUTPUTS,
    build_news2_model,
    news2_manifest,
)
from inference._qsofa import (
    QSOFA_BAND_LABELS,
    QSOFA_CODE,
    QSOFA_COLUMNS,
    QSOFA_OUTPUTS,
    build_qsofa_model,
    qsofa_manifest,
)
from inference._reference import (
    REFERENCE_MODELS,
    build_kdigo_bundle,
    build_news2_bundle,
    build_qsofa_bundle,
    build_reference_bundle,
    ensure_reference_bundles,
)
from inference._sandbox import Pending, Sandbox, SandboxLimits

__all__ = [
    "KDIGO_BAND_LABELS",
    "KDIGO_CODE",
    "KDIGO_COLUMNS",
    "KDIGO_OUTPUTS",
    "NEWS2_BAND_LABELS",
    "NEWS2_COLUMNS",
    "NEWS2_OUTPUTS",
    "QSOFA_BAND_LABELS",
    "QSOFA_CODE",
    "QSOFA_COLUMNS",
    "QSOFA_OUTPUTS",
    "REFERENCE_MODELS",
    "SCORE_SYSTEM",
    "UMOL_PER_MG_DL",
    "AdvisoryMapping",
    "BundleRejected",
    "Code",
    "Explanation",
    "FeatureExtractor",
    "InferenceEngine",
    "InferenceError",
    "InputSource",
    "MissingInputs",
    "ModelBundle",
    "ModelInput",
    "ModelManifest",
    "Pending",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "UnknownModel",
    "build_advisories",
    "build_kdigo_bundle",
    "build_kdigo_model",
    "build_news2_bundle",
    "build_news2_model",
    "build_qsofa_bundle",
    "build_qsofa_model",
    "build_reference_bundle",
    "ensure_reference_bundles",
    "kdigo_manifest",
    "key_id",
    "load_bundle",
    "news2_manifest",
    "observations_from_bundle",
    "qsofa_manifest",
    "resource_id",
    "sign_bundle",
]
