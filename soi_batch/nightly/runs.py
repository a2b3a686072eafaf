"""Which runs are alive: one lock file per run; what a killed run left behind is cleaned up.

A run holds an exclusive ``flock`` on ``<staging root>/<run_id>.lock`` from before its manifest
is written until after its final manifest is written.  The operating system releases the lock
when the process dies, however it dies (SIGKILL included), so another run can tell a live run
from a dead one without guessing from ages or pids:

* :func:`clean_stale_staging` removes only the staging folders of dead runs (two jobs sharing a
  ``staging_dir`` never delete each other's staging);
* :func:`mark_interrupted` rewrites the ``running`` manifests of dead runs as ``interrupted``,
  with what they committed, read from the output table's commit metadata
  (``soi_batch_run_id``: :func:`soi_batch.nightly.sink.committed_by_run`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from soi_batch.nightly.manifest import RunManifest
from soi_batch.nightly.sink import committed_by_run
from soi_batch.storage import StorageOptions

log = logging.getLogger(__name__)


class RunLock:
    """The lock a live run holds on ``<root>/<run_id>.lock`` (released when the process dies)."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.path = root / f"{run_id}.lock"
        for attempt in range(3):  # another run removes the shared root when it looks empty
            root.mkdir(parents=True, exist_ok=True)
            try:
                self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing releases the flock
        self._fd = None


def _is_alive(lock_path: Path) -> bool:
    """True while some process holds the lock at ``lock_path`` (False if the file is missing)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def clean_stale_staging(root: Path, *, keep: str) -> list[str]:
    """Remove staging folders under ``root`` whose run is dead (not ``keep``); the names removed."""
    removed = []
    if root.is_dir():
        for old in sorted(root.iterdir()):
            if old.name == keep or not old.is_dir():
                continue
            lock = root / f"{old.name}.lock"
            if _is_alive(lock):
                log.info("staging %s belongs to a run that is still running; left alone", old)
                continue
            log.info("removing staging %s left by a run that ended without cleaning up", old)
            shutil.rmtree(old, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed.append(old.name)
    return removed


def mark_interrupted(manifest_dir: Path, output: str, *, exclude_run: str,
                     storage_options: StorageOptions | None = None) -> list[RunManifest]:
    """Rewrite the ``running`` manifests of dead runs as ``interrupted`` with what they committed."""
    marked = []
    for path in sorted(manifest_dir.glob("run-*.json")):
        manifest = _read(path)
        if manifest is None or manifest.status != "running" or manifest.run_id == exclude_run:
            continue
        if manifest.lock_file and _is_alive(Path(manifest.lock_file)):
            log.warning("run %s (%s) is still running: another nightly job writes %s now", manifest.run_id,
                        path.name, output)
            continue
        manifest = _read(path)  # re-read: a run that has just ended wrote its final manifest first
        if manifest is None or manifest.status != "running":
            continue
        committed = committed_by_run(output, manifest.run_id, storage_options)
        manifest.status = "interrupted"
        manifest.error = (f"interrupted: the job ended without finishing this run (killed?); found by run "
                          f"{exclude_run}. {committed.commits} commit(s) of this run are in {output}")
        manifest.chunks_committed = max(manifest.chunks_committed, committed.commits)
        counts = manifest.counts
        counts.inserted, counts.updated = max(counts.inserted, committed.inserted), max(counts.updated,
                                                                                         committed.updated)
        counts.classified = max(counts.classified, committed.inserted + committed.updated)
        if committed.last_version is not None:
            manifest.output_version_end = committed.last_version
        manifest.write(manifest_dir)
        log.warning("run %s did not finish (killed?): marked interrupted in %s; it had committed %d row(s) in %d "
                    "commit(s); this run classifies whatever is left", manifest.run_id, path.name,
                    counts.classified, committed.commits)
        marked.append(manifest)
    return marked


def _read(path: Path) -> RunManifest | None:
    try:
        return RunManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("skipping unreadable manifest %s: %s", path, exc)
        return None
