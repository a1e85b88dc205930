"""Configuration: one YAML file, environment overrides, safe defaults.

Precedence (highest first): explicit CLI flags, ``WARDGATE_*`` environment variables
(``WARDGATE_MLLP__PORT=2576``), the YAML file, the defaults here. Defaults are the
safe ones: listeners on 127.0.0.1, external destinations off, and shadow mode on for
any destination that is enabled.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

if TYPE_CHECKING:  # imported when used: reading the configuration stays light
    from security import KeyRing
    from security.deid import Deidentifier, FreeTextMode


class ListenerConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int


class MllpListenerConfig(ListenerConfig):
    port: int = 2575
    max_message_bytes: int = 1_048_576


class HttpListenerConfig(ListenerConfig):
    port: int = 8080


class IdentifierRef(BaseModel):
    system: str
    value: str


class SandboxConfig(BaseModel):
    memory_bytes: int = 2 * 1024**3
    cpu_seconds: int = 3600
    call_timeout_s: float = 10.0


ModelMode = Literal["active", "shadow", "off"]
"""active: computed and written; shadow: computed and recorded, never written; off: skipped."""
MODEL_MODES: tuple[ModelMode, ...] = ("active", "shadow", "off")


class InferenceConfig(BaseModel):
    batch_max: int = 256
    batch_wait_ms: float = 2.0
    trusted_keys: list[str] = Field(
        default_factory=list, description="base64 raw Ed25519 public keys of model publishers"
    )
    news2_spo2_scale2_patients: list[IdentifierRef] = Field(
        default_factory=list,
        description="patients whose NEWS2 uses SpO2 scale 2 (hypercapnic respiratory failure)",
    )
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    model_modes: dict[str, ModelMode] = Field(
        default_factory=dict,
        description="per model id; unlisted models are active; PUT /admin/models/{id}/mode "
        "overrides at run time",
    )
    feature_workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="worker processes that build each batch's feature rows (0: the infer "
        "stage's own thread); the stage still scores and commits, in topic order",
    )


class MllpDestinationConfig(BaseModel):
    name: str
    host: str
    port: int
    enabled: bool = False
    shadow: bool = True
    timeout_s: float = 5.0


class WritebackConfig(BaseModel):
    mllp: list[MllpDestinationConfig] = Field(default_factory=list)


class DeidConfig(BaseModel):
    """De-identification settings; ``deidentifier`` is the one way the gateway builds the
    engine from them, so the pipeline, ``wardgate deid`` and ``POST /deid`` agree."""

    shift_range_days: tuple[int, int] = (-365, -1)
    free_text: Literal["remove", "tag", "surrogate"] = Field(
        default="remove",
        description="notes and text values: removed (safe default), or kept with identifiers "
        "replaced by [NAME]-style tags or by typed surrogates",
    )
    profile: str = Field(
        default="safe-harbor",
        description="what survives: safe-harbor (HIPAA Safe Harbor, the default), "
        "limited-data-set (HIPAA limited data set: only under a data use agreement), "
        "or a path to a YAML profile (docs/security.md)",
    )

    @field_validator("profile")
    @classmethod
    def _profile_loads(cls, value: str) -> str:
        """Refuse a bad profile when the configuration is read, not at the first message."""
        from security.deid import load_profile

        load_profile(value)  # ProfileError (a ValueError) names the profile and bad path
        return value

    def deidentifier(
        self,
        keys: KeyRing,
        *,
        free_text: FreeTextMode | None = None,
        profile: str | None = None,
    ) -> Deidentifier:
        """The engine for these settings and keys; ``free_text``/``profile`` override."""
        from security.deid import Deidentifier

        return Deidentifier(
            keys.pseudonym,
            keys.dateshift,
            keys.pseudonym_version,
            self.shift_range_days,
            free_text=free_text or self.free_text,
            profile=profile or self.profile,
        )


StageName = Literal["process", "infer", "writeback"]
STAGES: tuple[StageName, ...] = ("process", "infer", "writeback")
"""The pipeline's stages, upstream first: journal -> process -> infer -> writeback."""


def _two_processes() -> list[list[StageName]]:
    return [["process"], ["infer", "writeback"]]


class PipelineConfig(BaseModel):
    """How the stages are laid out in processes (ADR 7).

    ``processes``: groups of stages, upstream first; each group is one supervised child
    (``wardgate stage pipeline --stages a,b``) that takes its stages' locks, so at most
    one consumer per topic runs. Default: normalize + de-identify in one process, infer +
    writeback in another (the split measured best on 2 cores); ``[[process, infer,
    writeback]]`` is the single-process layout of ADR 4.
    """

    processes: list[list[StageName]] = Field(default_factory=_two_processes)
    batch_max: int = Field(
        default=256,
        ge=1,
        description="most messages a normalize or writeback step takes at once (infer's is "
        "inference.batch_max): a message waits for its whole batch to commit",
    )
    process_workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="worker processes that normalize + de-identify each batch of the process "
        "stage (0: the stage's own thread). The stage stays the journal's one consumer and "
        "commits in order; more workers use more cores, each holds the de-identification keys",
    )
    nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="how much lower the pipeline processes' CPU priority is than ingest's: "
        "with the stages on every core, ingest must still win the CPU to ACK within 10 ms",
    )

    @field_validator("processes")
    @classmethod
    def _every_stage_once_in_order(cls, value: list[list[StageName]]) -> list[list[StageName]]:
        if [s for group in value for s in group] != list(STAGES) or not all(value):
            raise ValueError(
                "pipeline.processes must list each of process, infer, writeback once, "
                "upstream first, in non-empty groups (e.g. [[process], [infer, writeback]])"
            )
        return value


class Settings(BaseSettings):
    """The whole gateway's configuration."""

    model_config = SettingsConfigDict(env_prefix="WARDGATE_", env_nested_delimiter="__")

    data_dir: Path = Path("data")
    timezone: str = "UTC"
    log_level: str = "INFO"
    mllp: MllpListenerConfig = Field(default_factory=MllpListenerConfig)
    http: HttpListenerConfig = Field(default_factory=HttpListenerConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    writeback: WritebackConfig = Field(default_factory=WritebackConfig)
    deid: DeidConfig = Field(default_factory=DeidConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    key_files: dict[str, Path] = Field(
        default_factory=dict, description="key name -> file holding it (Kubernetes secrets)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment overrides the YAML file (passed in as init values)."""
        return (env_settings, init_settings, file_secret_settings)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (if any), let the environment override it, then apply CLI flags.

    ``overrides`` use dotted names (``mllp.port``); ``None`` means "not given".
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: top level must be a mapping")
        file_values = loaded or {}
    merged = Settings(**file_values).model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        target = merged
        *parents, leaf = dotted.split(".")
        for part in parents:
            target = target[part]
        target[leaf] = value
    return Settings.model_validate(merged)
