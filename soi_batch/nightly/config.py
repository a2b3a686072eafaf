"""The nightly job's settings: one pydantic model, built from the CLI and/or a YAML file.

The library takes a :class:`NightlyConfig`; only ``jobs/nightly.py`` reads the command line.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from soi_batch.classifier import ClassifierConfig
from soi_batch.errors import ConfigError
from soi_batch.ray_data import RayOptions
from soi_batch.storage import is_uri, redacted

_Section = TypeVar("_Section", ClassifierConfig, RayOptions)


class NightlyConfig(BaseModel):
    """Everything one nightly run needs (see ``jobs/nightly.example.yml``).

    Every setting is checked here, when the config is built: an invalid one raises
    :class:`~soi_batch.errors.ConfigError` naming the setting, its value and what is valid.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field(min_length=1)
    """Input table: a Delta table, a Parquet file/directory or a CSV file (a path or a URI, ``s3://…``)."""
    output: str = Field(min_length=1)
    """Output Delta table (created on the first run; MERGEd into on every run); a path or a URI."""
    storage_options: dict[str, str] = Field(default_factory=dict)
    """How to reach URI inputs and outputs, in Delta Lake's names, e.g. {AWS_ENDPOINT_URL: …, AWS_REGION: …}
    (:mod:`soi_batch.storage`); unset ones come from the environment."""
    model: str | None = None
    """Named model (soi-small, soi-mini), bundle directory or hub id (None: the default model)."""
    cache_dir: str | None = None
    """Where a named model is built on first use (None: ``~/.cache/soi-batch``)."""
    id_col: str | list[str] = "row_key"
    """Unique report id column, or several columns that together identify a report (a composite
    key, e.g. ``[ID, EventDate]`` for OSHA's files: the key is then the generated column
    ``soi_key``); the MERGE key.  Integers or strings (float ids are refused).  Duplicated ids:
    the last row in input order wins, and the others are counted, listed and warned about."""
    text_col: str = Field(default="Final Narrative", min_length=1)
    input_format: Literal["csv", "parquet", "delta"] | None = None
    encoding: str | None = None
    """CSV encoding (None: utf-8 if the file decodes, else cp1252)."""
    manifest_dir: str | None = Field(default=None, min_length=1)
    """Where run manifests go (None: ``<output>_manifests`` next to the output table)."""
    staging_dir: str | None = Field(default=None, min_length=1)
    """Where the selected rows are staged as Parquet for Ray (None: ``<manifest_dir>/_staging``)."""
    chunk_rows: int = Field(default=5000, ge=1)
    """Rows per MERGE commit: a crash loses at most the chunk in flight."""
    retry_errors: bool = False
    """Also re-classify rows whose last result has ``error`` set."""
    keep_probabilities: bool = False
    """Also store division/major-group probability maps (for ``soi-batch trends``)."""
    ray_address: str | None = None
    ray_num_cpus: int | None = Field(default=None, ge=1)
    """CPUs of a local Ray (None: all cores); ignored with ``ray_address``."""
    ray_object_store_memory: int | None = Field(default=None, ge=100 * 2**20)
    """Bytes of a local Ray's object store (None: Ray's default, 30 % of RAM); ignored with
    ``ray_address``.  Workers map the store's pages, so this bounds the memory the run's
    blocks can ever take (Ray spills to disk beyond it)."""
    ray_progress_bars: bool = False
    """Show Ray Data's own progress bars besides the job's bar in rows (``run_nightly(progress=True)``)."""
    classifier: dict[str, Any] = Field(default_factory=dict)
    """:class:`~soi_batch.classifier.ClassifierConfig` fields, e.g. {engine: hf, batch_size: 64}."""
    ray: dict[str, Any] = Field(default_factory=dict)
    """:class:`~soi_batch.ray_data.RayOptions` fields, e.g. {num_actors: 2, batch_size: 256}."""

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as exc:
            raise ConfigError(f"invalid nightly settings: {_problems(exc)}") from exc

    @field_validator("id_col")
    @classmethod
    def _id_columns_named(cls, value: str | list[str]) -> str | list[str]:
        if value == "":
            raise ConfigError("String should have at least 1 character")
        if isinstance(value, list) and (not value or any(not name for name in value)):
            raise ConfigError("give one id column name, or a non-empty list of column names (a composite key)")
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ConfigError("a column is listed twice")
        return value

    @property
    def id_columns(self) -> list[str]:
        """The id column(s), as a list."""
        return [self.id_col] if isinstance(self.id_col, str) else list(self.id_col)

    @field_serializer("storage_options")
    def _without_secrets(self, options: dict[str, str]) -> dict[str, str]:
        return redacted(options)  # the run manifest records the config: no credentials in it

    @model_validator(mode="after")
    def _settings_build(self) -> NightlyConfig:
        self.classifier_config()  # unknown or invalid engine/Ray settings fail here, before any work
        self.ray_options()
        if is_uri(self.resolved_manifest_dir) or is_uri(self.resolved_staging_dir):
            raise ConfigError(f"manifest_dir / staging_dir must be folders (local or mounted) when the output is "
                             f"a URI ({self.output}); set manifest_dir")
        return self

    def classifier_config(self) -> ClassifierConfig:
        return _build_section(ClassifierConfig, self.classifier, "classifier")

    def ray_options(self) -> RayOptions:
        return _build_section(RayOptions, self.ray, "ray")

    @property
    def resolved_manifest_dir(self) -> str:
        if self.manifest_dir is not None:
            return self.manifest_dir
        return f"{self.output.rstrip('/')}_manifests"

    @property
    def resolved_staging_dir(self) -> str:
        if self.staging_dir is not None:
            return self.staging_dir
        return f"{self.resolved_manifest_dir.rstrip('/')}/_staging"

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
        except ConfigError as exc:
            where = f"{yaml_path} / command line" if yaml_path else "command line"
            cause = exc.__cause__
            problems = _problems(cause) if isinstance(cause, ValidationError) else str(exc)
            raise ConfigError(f"invalid nightly settings ({where}): {problems}") from cause


def _build_section(cls: type[_Section], settings: dict[str, Any], section: str) -> _Section:
    """``cls(**settings)``; unknown names and invalid values raise a ConfigError naming ``section``."""
    known = sorted(f.name for f in fields(cls))
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ConfigError(f"{section}: no setting(s) {', '.join(map(str, unknown))}; "
                          f"its settings are {', '.join(known)}")
    try:
        return cls(**settings)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{section}: {exc}") from exc


def _problems(exc: ValidationError) -> str:
    """Each invalid setting, "; "-separated: its name, the value given and what is valid."""
    settings = ", ".join(NightlyConfig.model_fields)
    lines = []
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            lines.append(f"{name}: not a setting; the settings are {settings}")
        elif error["type"] == "missing":
            lines.append(f"{name}: required")
        elif name:
            lines.append(f"{name}={error['input']!r}: {message}")
        else:
            lines.append(message)
    return "; ".join(lines)
