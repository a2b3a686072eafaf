"""Memory and throughput of the nightly job at scale (CPU path, streaming, chunked MERGE).

Writes a synthetic Delta input of N rows — narratives resampled from the bundled OSHA SIR
(``soi_batch.datasets.osha.read_osha_sir``), ids ``syn-00000000``.. in input order — in batches and
Parquet row groups of 50,000 rows, in a separate process (so the driver's memory is the job's alone), then runs
:func:`run_nightly` on it with a local Ray while a thread samples the memory of the driver and
every process it started (raylet, GCS, Ray Data workers, the classifier actor).  The driver's
peak is reported for the selection phase (before Ray starts) and the classify-and-commit phase
apart.  With ``--upgrade`` a second run with a new model version re-classifies every row
(all MERGEs, no appends) and is measured the same way.

The model is the tiny random Mistral bundle of ``tests/tiny.py`` (2 layers, hidden 32): this
measures the pipeline (selection, staging, Ray streaming, MERGE) and its memory, not a
model's speed.

    python bench/nightly_scale.py --rows 100000 1000000 --work /tmp/nightly_scale
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import shutil
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "nightly_scale.json"
GiB = 1 << 30
log = logging.getLogger("nightly_scale")


def rss_parts(pid: int) -> dict[str, float]:
    """RSS split from /proc: anonymous (heap), shared memory (Ray's object store pages this
    process has touched) and file-backed (libraries), in GiB."""
    parts = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssShmem:", "RssFile:")):
                key, kb = line.split(":")
                parts[key[3:].strip().lower()] = round(int(kb.split()[0]) * 1024 / GiB, 3)
    return parts


class MemorySampler(threading.Thread):
    """Peak RSS of this process, and peak RSS / PSS summed over it and all its descendants."""

    def __init__(self, interval: float = 1.0, series_every: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.stop = interval, threading.Event()
        self.me = psutil.Process()
        self.peak = {"driver_rss": 0, "total_rss": 0, "total_pss": 0, "workers_rss": 0,
                     "driver_rss_select": 0, "driver_rss_classify": 0, "driver_anon_classify": 0}
        self.samples = 0
        self.series: list[dict] = []
        """Every ``series_every`` s: seconds since start, driver RSS and total PSS (GiB), and the
        three largest processes by PSS, each with its RSS split into anon / shmem / file
        (``rss_parts``), and the driver's Arrow pool bytes — to tell growth with rows from
        caches that fill up."""
        self.series_every, self.started = series_every, time.monotonic()

    def run(self) -> None:
        import ray

        while not self.stop.is_set():
            driver = self.me.memory_info().rss
            total_rss, total_pss = driver, self.me.memory_full_info().pss
            by_pss = [(total_pss, "driver", self.me.pid)]
            children = self.me.children(recursive=True)
            phase = "classify" if ray.is_initialized() else "select"  # Ray starts after selection
            self.peak[f"driver_rss_{phase}"] = max(self.peak[f"driver_rss_{phase}"], driver)
            if children:
                anon = int(rss_parts(self.me.pid)["anon"] * GiB)
                self.peak["driver_anon_classify"] = max(self.peak["driver_anon_classify"], anon)
            for child in children:
                try:
                    info = child.memory_full_info()
                    name = " ".join(child.cmdline()[:2])[-60:] or child.name()
                except psutil.Error:
                    continue
                total_rss += info.rss
                total_pss += info.pss
                by_pss.append((info.pss, name, child.pid))
            now = time.monotonic() - self.started
            if not self.series or now - self.series[-1]["t"] >= self.series_every:
                top = []
                for pss, name, pid in sorted(by_pss, reverse=True)[:3]:
                    try:
                        top.append([name, round(pss / GiB, 3), rss_parts(pid)])
                    except OSError:
                        continue
                self.series.append({"t": round(now), "driver_rss_gib": round(driver / GiB, 3),
                                    "driver_rss_parts_gib": rss_parts(self.me.pid),
                                    "driver_arrow_gib": round(pa.total_allocated_bytes() / GiB, 3),
                                    "total_pss_gib": round(total_pss / GiB, 3),
                                    "top_pss_gib": top})
            for key, value in (("driver_rss", driver), ("total_rss", total_rss), ("total_pss", total_pss),
                               ("workers_rss", total_rss - driver)):
                self.peak[key] = max(self.peak[key], value)
            self.samples += 1
            self.stop.wait(self.interval)


def write_input(path: Path, rows: int, *, batch_rows: int = 50_000, seed: int = 0) -> None:
    from deltalake import WriterProperties, write_deltalake

    from soi_batch.datasets.osha import read_osha_sir

    osha = read_osha_sir()
    texts = pa.array(osha["Final Narrative"].tolist(), type=pa.string())
    event = pa.array(osha["EventDate"].tolist(), type=pa.string())
    rng = np.random.default_rng(seed)
    schema = pa.schema([("row_key", pa.string()), ("EventDate", pa.string()), ("Final Narrative", pa.string())])

    def batches():
        for start in range(0, rows, batch_rows):
            n = min(batch_rows, rows - start)
            pick = pa.array(rng.integers(0, len(texts), n))
            yield pa.record_batch([pa.array([f"syn-{i:08d}" for i in range(start, start + n)]),
                                   event.take(pick), texts.take(pick)], schema=schema)

    # row groups of batch_rows rows (delta-rs would otherwise write one row group of up to 1 M rows,
    # and a Parquet reader holds a whole row group of the columns it reads)
    write_deltalake(str(path), pa.RecordBatchReader.from_batches(schema, batches()), mode="overwrite",
                    writer_properties=WriterProperties(max_row_group_size=batch_rows))


def measured_run(config, series_every: float) -> dict:
    """One :func:`run_nightly` under a :class:`MemorySampler`; its figures."""
    import ray

    from soi_batch.nightly import run_nightly

    sampler = MemorySampler(series_every=series_every)
    sampler.start()
    manifest = run_nightly(config)
    ray.shutdown()  # the next run starts its own Ray, so each run's peaks are its own
    sampler.stop.set()
    sampler.join()
    peak = {k: round(v / GiB, 3) for k, v in sampler.peak.items()}
    return {
        "wall_seconds": manifest.wall_seconds, "rows_per_second": manifest.rows_per_second,
        "commit_seconds": manifest.commit_seconds, "chunks_committed": manifest.chunks_committed,
        "classified": manifest.counts.classified, "inserted": manifest.counts.inserted,
        "updated": manifest.counts.updated, "errors": manifest.counts.errors,
        "peak_driver_rss_gib": peak["driver_rss"], "peak_driver_rss_select_gib": peak["driver_rss_select"],
        "peak_driver_rss_classify_gib": peak["driver_rss_classify"],
        "peak_driver_anon_classify_gib": peak["driver_anon_classify"],
        "peak_workers_rss_gib": peak["workers_rss"], "peak_total_rss_gib": peak["total_rss"],
        "peak_total_pss_gib": peak["total_pss"], "memory_samples": sampler.samples,
        "memory_series": sampler.series,
    }


def measure(rows: int, work: Path, bundle: Path, chunk_rows: int, *, series_every: float = 30.0,
            object_store_bytes: int | None = None, upgrade_bundle: Path | None = None) -> dict:
    from deltalake import DeltaTable

    from soi_batch.nightly import NightlyConfig, run_nightly

    inp, out = work / f"input_{rows}", work / f"out_{rows}"
    for p in (inp, out, Path(f"{out}_manifests")):
        shutil.rmtree(p, ignore_errors=True)
    t = time.perf_counter()
    writer = multiprocessing.get_context("spawn").Process(target=write_input, args=(inp, rows))
    writer.start()
    writer.join()
    if writer.exitcode != 0:
        raise RuntimeError(f"writing the synthetic input {inp} failed (exit code {writer.exitcode})")
    write_s = time.perf_counter() - t

    def config(model: Path) -> NightlyConfig:
        return NightlyConfig(input=str(inp), output=str(out), model=str(model), chunk_rows=chunk_rows,
                             ray_num_cpus=2, ray_object_store_memory=object_store_bytes)

    result = {"rows": rows, "chunk_rows": chunk_rows, "input_write_seconds": round(write_s, 1),
              "object_store_bytes": object_store_bytes, **measured_run(config(bundle), series_every)}
    second = run_nightly(config(bundle))
    result.update(rerun_classified=second.counts.classified, rerun_wall_seconds=second.wall_seconds,
                  output_rows=DeltaTable(str(out)).to_pyarrow_dataset().count_rows())
    if upgrade_bundle is not None:
        upgrade = measured_run(config(upgrade_bundle), series_every)
        upgrade["output_rows"] = DeltaTable(str(out)).to_pyarrow_dataset().count_rows()
        result["upgrade"] = upgrade
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/nightly_scale"))
    ap.add_argument("--chunk-rows", type=int, default=5000)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--series-every", type=float, default=30.0, help="seconds between memory-series points")
    ap.add_argument("--object-store-gib", type=float, default=None,
                    help="local Ray object store size (default: Ray's, 30%% of RAM)")
    ap.add_argument("--upgrade", action="store_true",
                    help="then re-classify every row with a new model version (all MERGEs) and measure that run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from soi_batch.datasets.osha import read_osha_sir
    from tests.tiny import build_tiny_bundle

    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.work / "tiny_bundle"
    if not bundle.exists():
        build_tiny_bundle(bundle, read_osha_sir()["Final Narrative"].iloc[:300].tolist())
    upgrade = None
    if args.upgrade:
        from soi_batch.bundle import load_bundle, write_manifest

        upgrade = args.work / "tiny_bundle_v1"
        if not upgrade.exists():
            shutil.copytree(bundle, upgrade)
            write_manifest(upgrade, load_bundle(upgrade).manifest.model_copy(update={"model_version": "1"}))
    report = {
        "what": "jobs/nightly pipeline (select, stage, Ray Data classify, chunked Delta MERGE), CPU",
        "model": "tiny random Mistral bundle from tests/tiny.py build_tiny_bundle (2 layers, hidden 32): "
                 "pipeline cost, not model speed",
        "machine": f"{platform.node()} {os.cpu_count()} cores, {psutil.virtual_memory().total / GiB:.0f} GiB, "
                   "shared with other engineers' CPU-heavy jobs",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": [],
    }
    for rows in args.rows:
        store = int(args.object_store_gib * GiB) if args.object_store_gib else None
        result = measure(rows, args.work, bundle, args.chunk_rows, series_every=args.series_every,
                         object_store_bytes=store, upgrade_bundle=upgrade)
        result["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
        report["runs"].append(result)
        log.info("scale %d: %s", rows, result)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(report, indent=2) + "\n")
        shutil.rmtree(args.work / f"input_{rows}", ignore_errors=True)
        shutil.rmtree(args.work / f"out_{rows}", ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
