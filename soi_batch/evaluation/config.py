"""What one evaluation run does: the data, the model, the baseline and their settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from soi_batch.errors import ConfigError
from soi_batch.evaluation.baseline import BaselineConfig

OSHA_SIR = "osha-sir"
"""``EvaluationConfig.data`` value that selects the bundled OSHA split."""
SplitName = Literal["train", "validation", "test", "all"]
SPLITS: tuple[str, ...] = ("train", "validation", "test", "all")


@dataclass(frozen=True)
class EvaluationConfig:
    data: str
    """A CSV/Parquet/Delta path, or ``"osha-sir"`` for the bundled split."""
    label_col: str = "Source"
    text_col: str = "Final Narrative"
    model: str | None = None
    """Named model, bundle directory or hub id; None is the default model."""
    cache_dir: Path | None = None
    """Where a named model is built on first use (None: ``~/.cache/soi-batch``)."""
    input_format: Literal["csv", "parquet", "delta"] | None = None
    encoding: str | None = None
    """CSV encoding; None tries UTF-8 and falls back to cp1252."""
    split: SplitName = "test"
    """Part of the bundled split (``osha-sir`` only)."""
    limit: int | None = None
    """Evaluate a seeded random sample of this many rows (None: all rows)."""
    seed: int = 0
    baseline: bool = True
    baseline_config: BaselineConfig | None = None
    """Baseline settings; None: the defaults with ``seed``."""
    batch_size: int = 64
    chunk: int = 512
    """Reports per classifier call (progress granularity)."""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of train, validation, test, all; got {self.split!r}")
        if (self.baseline and self.data == OSHA_SIR and self.split in ("validation", "all")
                and self.baseline_settings().train_on == "train+validation"):
            raise ConfigError(f"the baseline trained on train+validation cannot be evaluated on the "
                              f"{self.split!r} part it was trained on; use --split test")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be ≥ 1, got {self.limit}")

    def baseline_settings(self) -> BaselineConfig:
        """``baseline_config``, or the baseline defaults with this run's ``seed``."""
        return self.baseline_config or BaselineConfig(seed=self.seed)
