"""Vital-sign inputs that several reference models read, defined once.

A model that needs the same observation (respiratory rate, systolic pressure) takes the
same input spec, so codes, units and windows cannot drift apart between models.
"""

from __future__ import annotations

from inference._manifest import ModelInput, loinc

VITALS_WINDOW_H = 24.0

RESPIRATORY_RATE = ModelInput(
    name="respiratory_rate",
    kind="quantity",
    description="respiration rate",
    codes=[loinc("9279-1", "Respiratory rate")],
    unit="/min",
    lookback_hours=VITALS_WINDOW_H,
)

SYSTOLIC_BP = ModelInput(
    name="systolic_bp",
    kind="quantity",
    description="systolic blood pressure",
    codes=[loinc("8480-6", "Systolic blood pressure")],
    unit="mm[Hg]",
    lookback_hours=VITALS_WINDOW_H,
)
