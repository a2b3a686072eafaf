"""The nightly job's settings: one pydantic model, built from the CLI and/or a YAML file.

The library takes a :class:`NightlyConfig`; only ``jobs/nightly.py`` reads the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from soi_batch.classifier import ClassifierConfig
from soi_batch.errors import ConfigError
from soi_batch.ray_data import RayOptions


class NightlyConfig(BaseModel):
    """Everything one nightly run needs (see ``jobs/nightly.example.yml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str
    """Input table: a Delta table, a Parquet file/directory or a CSV file."""
    output: str
    """Output Delta table (created on the first run; MERGEd into on every run)."""
    model: str | None = None
    """Named model (soi-small, soi-mini), bundle directory or hub id (None: the default model)."""
    cache_dir: str | None = None
    """Where a named model is built on first use (None: ``~/.cache/soi-batch``)."""
    id_col: str = "row_key"
    """Unique report id; the MERGE key. Duplicated ids: the last row in input order wins."""
    text_col: str = "Final Narrative"
    input_format: Literal["csv", "parquet", "delta"] | None = None
    encoding: str | None = None
    """CSV encoding (None: utf-8 if the file decodes, else cp1252)."""
    manifest_dir: str | None = None
    """Where run manifests go (None: ``<output>_manifests`` next to the output table)."""
    staging_dir: str | None = None
    """Where the selected rows are staged as Parquet for Ray (None: ``<manifest_dir>/_staging``)."""
    chunk_rows: int = Field(default=5000, ge=1)
    """Rows per MERGE commit: a crash loses at most the chunk in flight."""
    retry_errors: bool = False
    """Also re-classify rows whose last result has ``error`` set."""
    keep_probabilities: bool = False
    """Also store division/major-group probability maps (for ``soi-batch trends``)."""
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    """CPUs of a local Ray (None: all cores); ignored with ``ray_address``."""
    ray_object_store_memory: int | None = Field(default=None, ge=100 * 2**20)
    """Bytes of a local Ray's object store (None: Ray's default, 30 % of RAM); ignored with
    ``ray_address``.  Workers map the store's pages, so this bounds the memory the run's
    blocks can ever take (Ray spills to disk beyond it)."""
    ray_progress_bars: bool = False
    """Show Ray Data's own progress bars besides the job's tqdm bar over committed rows."""
    classifier: dict[str, Any] = Field(default_factory=dict)
    """:class:`~soi_batch.classifier.ClassifierConfig` fields, e.g. {engine: hf, batch_size: 64}."""
    ray: dict[str, Any] = Field(default_factory=dict)
    """:class:`~soi_batch.ray_data.RayOptions` fields, e.g. {num_actors: 2, batch_size: 256}."""

    @field_validator("id_col", "text_col")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _settings_build(self) -> NightlyConfig:
        self.classifier_config()  # unknown or invalid engine/Ray settings fail here, before any work
        self.ray_options()
        return self

    def classifier_config(self) -> ClassifierConfig:
        try:
            return ClassifierConfig(**self.classifier)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"classifier settings {self.classifier}: {exc}") from exc

    def ray_options(self) -> RayOptions:
        try:
            return RayOptions(**self.ray)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"ray settings {self.ray}: {exc}") from exc

    @property
    def resolved_manifest_dir(self) -> str:
        return self.manifest_dir or f"{self.output.rstrip('/')}_manifests"

    @property
    def resolved_staging_dir(self) -> str:
        return self.staging_dir or f"{self.resolved_manifest_dir.rstrip('/')}/_staging"

    @classmethod
    def build(cls, yaml_path: str | Path | None = None, **overrides: Any) -> NightlyConfig:
        """Settings from ``yaml_path`` (if any), then ``overrides`` that are not None."""
        data: dict[str, Any] = {}
        if yaml_path is not None:
            try:
                loaded = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"{yaml_path}: cannot read the nightly config: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ConfigError(f"{yaml_path}: expected a mapping of settings, got {type(loaded).__name__}")
            data.update(loaded)
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ValidationError as exc:
            where = f"{yaml_path} / command line" if yaml_path else "command line"
            raise ConfigError(f"invalid nightly settings ({where}): {exc}") from exc
