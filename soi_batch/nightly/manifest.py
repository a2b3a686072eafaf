"""One JSON manifest per run: what was read, selected, classified, and how labels moved.

Written when the run starts (``status: running``), and rewritten when it ends
(``completed`` or ``failed``).  A killed run leaves a ``running`` manifest behind; the next run
rewrites it as ``interrupted`` with what it had committed (:mod:`soi_batch.nightly.runs`).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


class Counts(BaseModel):
    read: int = 0
    """Input rows read."""
    duplicate_ids_dropped: int = 0
    """Rows whose id appears again later in the input (the last one is kept)."""
    duplicate_ids: list[Any] = Field(default_factory=list)
    """The ids that occur more than once in the input (the first 1,000; generated keys for a composite id)."""
    null_ids_dropped: int = 0
    duplicate_ids_repaired: int = 0
    """Ids found more than once in the output table when the run started (one row of each kept)."""
    repaired_ids: list[Any] = Field(default_factory=list)
    """Those ids (the first 1,000)."""
    skipped: int = 0
    """Rows already classified by this model with the same text."""
    selected: int = 0
    selected_by_reason: dict[str, int] = Field(default_factory=dict)
    classified: int = 0
    """Rows committed to the output in this run (including those with ``error`` set)."""
    errors: int = 0
    """Committed rows with ``error`` set (no usable text, or scoring failed repeatedly)."""
    inserted: int = 0
    updated: int = 0


class RunManifest(BaseModel):
    run_id: str
    status: Literal["running", "completed", "failed", "interrupted"] = "running"
    """``interrupted``: the job died without ending the run (set by a later run)."""
    error: str | None = None
    lock_file: str | None = None
    """The run's lock (held while it runs: :class:`soi_batch.nightly.runs.RunLock`)."""
    model_id: str
    model_path: str
    input: str
    input_format: str
    input_version: int | None = None
    """Delta version of the input read by this run (None for Parquet/CSV)."""
    input_fingerprint: str
    output: str
    output_version_start: int | None = None
    output_version_end: int | None = None
    chunks_committed: int = 0
    chunk_rows: int
    counts: Counts = Field(default_factory=Counts)
    commit_seconds: float = 0.0
    """Time spent in Delta commits, appends and MERGEs (the rest of the classify phase is Ray work)."""
    rows_per_second: float | None = None
    """Committed rows / seconds spent classifying and merging (model load included)."""
    label_distribution: dict[str, float] = Field(default_factory=dict)
    """Division shares among the rows classified in this run (errors excluded)."""
    label_distribution_table: dict[str, float] = Field(default_factory=dict)
    """Division shares over the whole output table after this run."""
    previous_run_id: str | None = None
    """The latest completed run before this one (reference for ``label_shift_tvd_table``)."""
    label_shift_reference_run_id: str | None = None
    """The latest completed run that classified rows (reference for ``label_shift_tvd``)."""
    label_shift_tvd: float | None = None
    """Total variation distance of ``label_distribution`` from the reference run's (None if either is empty)."""
    label_shift_tvd_table: float | None = None
    wall_seconds: float | None = None
    started_at: str
    ended_at: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)

    def path(self, directory: str | Path) -> Path:
        return Path(directory) / f"run-{self.started_at.replace(':', '').replace('-', '')}-{self.run_id[:8]}.json"

    def write(self, directory: str | Path) -> Path:
        """Write atomically (temp file + rename) so a crash never leaves half a manifest."""
        target = self.path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        tmp.replace(target)
        return target


def previous_manifest(directory: str | Path, *, exclude_run: str | None = None,
                      classified_only: bool = False) -> RunManifest | None:
    """The latest *completed* run's manifest in ``directory`` (by start time), if any.

    ``classified_only``: the latest completed run that classified at least one row.
    """
    found: list[RunManifest] = []
    for p in Path(directory).glob("run-*.json"):
        try:
            m = RunManifest.model_validate_json(p.read_text(encoding="utf-8"))
        except ValueError as exc:
            log.warning("skipping unreadable manifest %s: %s", p, exc)
            continue
        if m.status == "completed" and m.run_id != exclude_run and (m.label_distribution or not classified_only):
            found.append(m)
    return max(found, key=lambda m: m.started_at) if found else None


def distribution(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total else {}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float | None:
    """½ Σ |p − q| over the union of labels; None when either side is empty."""
    if not p or not q:
        return None
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))
