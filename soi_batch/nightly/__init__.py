"""The nightly incremental job: classify new/changed reports and commit them to a Delta table by id."""

from soi_batch.nightly.config import NightlyConfig
from soi_batch.nightly.manifest import RunManifest
from soi_batch.nightly.run import run_nightly

__all__ = ["NightlyConfig", "RunManifest", "run_nightly"]
