"""Reference bundles the gateway builds for itself and signs with its local publisher key.

NEWS2 input codes:
- respiratory rate LOINC 9279-1 (/min); SpO2 LOINC 59408-5 or 2708-6 (%);
- supplemental oxygen, either LOINC 3151-8 inhaled oxygen flow rate (L/min; flow > 0 means
  on oxygen) or SNOMED CT 371825009 |Patient on oxygen| answered yes 373066001 / no
  373067005 (or a valueBoolean), the coding NHS England's vital-signs guidance uses; a coded
  "air or oxygen" answer of 722742002 |Breathing room air| or 371825009 is accepted too;
- systolic BP LOINC 8480-6 (mm[Hg]); heart rate LOINC 8867-4 (/min);
  temperature LOINC 8310-5 (Cel; [degF] is converted);
- consciousness: SNOMED CT 1104441000000107 ACVPU, alert 248234008 -> 0; new confusion
  130987000, voice 300202002, pain 450847001, unresponsive 422768004 -> 1;
- SpO2 scale 2: a ``config`` input, set per patient by configuration, default scale 1.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inference._bundle import MANIFEST_FILE, MODEL_FILE, sign_bundle
from inference._manifest import (
    LOINC,
    SNOMED,
    AdvisoryMapping,
    Code,
    InputSource,
    ModelInput,
    ModelManifest,
)
from inference._news2 import (
    NEWS2_BAND_LABELS,
    NEWS2_COLUMNS,
    NEWS2_COMPONENT_OUTPUTS,
    NEWS2_INPUT,
    NEWS2_OUTPUTS,
    build_news2_model,
)

NEWS2_VERSION = "1.0.0"
_WINDOW_H = 24.0


def _loinc(code: str, display: str, unit: str | None = None) -> InputSource:
    return InputSource(system=LOINC, code=code, display=display, unit=unit)


def news2_manifest() -> ModelManifest:
    """The manifest of the reference NEWS2 model; inputs follow ``NEWS2_COLUMNS``."""
    inputs = [
        ModelInput(
            name="respiratory_rate",
            kind="quantity",
            description="respiration rate",
            codes=[_loinc("9279-1", "Respiratory rate")],
            unit="/min",
            lookback_hours=_WINDOW_H,
        ),
        ModelInput(
            name="spo2",
            kind="quantity",
            description="oxygen saturation",
            codes=[
                _loinc("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
                _loinc("2708-6", "Oxygen saturation in Arterial blood"),
            ],
            unit="%",
            lookback_hours=_WINDOW_H,
        ),
        ModelInput(
            name="on_oxygen",
            kind="flag",
            description="supplemental oxygen (1) or air (0)",
            codes=[
                _loinc("3151-8", "Inhaled oxygen flow rate", unit="L/min"),
                InputSource(system=SNOMED, code="371825009", display="Patient on oxygen"),
            ],
            value_map={"373066001": 1.0, "373067005": 0.0, "371825009": 1.0, "722742002": 0.0},
            lookback_hours=_WINDOW_H,
        ),
        ModelInput(
            name="systolic_bp",
            kind="quantity",
            description="systolic blood pressure",
            codes=[_loinc("8480-6", "Systolic blood pressure")],
            unit="mm[Hg]",
            lookback_hours=_WINDOW_H,
        ),
        ModelInput(
            name="heart_rate",
            kind="quantity",
            description="pulse",
            codes=[_loinc("8867-4", "Heart rate")],
            unit="/min",
            lookback_hours=_WINDOW_H,
        ),
        ModelInput(
            name="temperature",
            kind="quantity",
            description="body temperature",
            codes=[_loinc("8310-5", "Body temperature")],
            unit="Cel",
            lookback_hours=_WINDOW_H,
        ),
        ModelInput(
            name="acvpu_not_alert",
            kind="coded",
            description="ACVPU other than Alert (new confusion, voice, pain, unresponsive)",
            codes=[InputSource(system=SNOMED, code="1104441000000107", display="ACVPU")],
            value_map={
                "248234008": 0.0,
                "130987000": 1.0,
                "300202002": 1.0,
                "450847001": 1.0,
                "422768004": 1.0,
            },
            lookback_hours=_WINDOW_H,
        ),
        ModelInput(
            name="spo2_scale2",
            kind="config",
            description="use SpO2 scale 2 (target 88-92%), set by a clinician per patient",
            default=0.0,
        ),
    ]
    assert [i.name for i in inputs] == list(NEWS2_COLUMNS)
    return ModelManifest(
        id="news2",
        version=NEWS2_VERSION,
        description="National Early Warning Score 2, as an ONNX graph of the published chart",
        reference="Royal College of Physicians. National Early Warning Score (NEWS) 2. 2017.",
        onnx_input=NEWS2_INPUT,
        inputs=inputs,
        outputs=list(NEWS2_OUTPUTS),
        advisory=AdvisoryMapping(
            kind="risk",
            score_output="total",
            band_output="band",
            band_labels=NEWS2_BAND_LABELS,
            component_outputs=NEWS2_COMPONENT_OUTPUTS,
            observation_code=Code(system=SNOMED, code="1104051000000101", display="NEWS2 score"),
        ),
    )


def build_news2_bundle(out_dir: Path, signing_key: Ed25519PrivateKey) -> Path:
    """Write and sign the NEWS2 bundle into ``out_dir`` (created; replaced atomically)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / MODEL_FILE).write_bytes(build_news2_model().SerializeToString())
        (staging / MANIFEST_FILE).write_text(news2_manifest().model_dump_json(indent=2) + "\n")
        sign_bundle(staging, signing_key)
        staging.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def ensure_reference_bundles(models_dir: Path, signing_key: Ed25519PrivateKey) -> list[Path]:
    """Build each reference bundle that is absent; return the paths it built.

    An existing bundle is never overwritten, not even a tampered one: loading it will be
    refused and recorded, which is the evidence an operator needs.
    """
    built: list[Path] = []
    target = Path(models_dir) / "news2"
    if not target.exists():
        built.append(build_news2_bundle(target, signing_key))
    return built
