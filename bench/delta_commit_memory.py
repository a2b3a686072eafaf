"""Driver memory of committing 5,000-row chunks into a growing Delta table, three ways.

Why the nightly sink appends new ids instead of MERGEing every chunk: each variant commits
``--chunks`` chunks of 5,000 result rows (OSHA narratives, the output schema) into a fresh
table, in a fresh process, and records RSS before, during (peak, sampled every 10 ms) and
after each commit.

* ``merge``: ``DeltaTable.merge`` with delta-rs defaults (``streamed_exec=True``) — what the
  nightly job did before;
* ``merge-early-filter``: ``streamed_exec=False``, so delta-rs derives an early filter from the
  chunk's id range and skips output files outside it (the sink's MERGE of known ids);
* ``append``: ``write_deltalake(mode="append")`` (the sink's path for new ids).

Ids are ``syn-00000000``.. in order (``--ids random`` shuffles them, so every file's id range
overlaps every chunk's).

    python bench/delta_commit_memory.py --chunks 200
"""

from __future__ import annotations

import argparse
import json
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
RESULTS = REPO / "bench" / "results" / "delta_commit_memory.json"
MiB = 1 << 20
CHUNK = 5000
VARIANTS = ("merge", "merge-early-filter", "append")


def _chunk_schema() -> pa.Schema:
    from soi_batch.schema import RESULT_SCHEMA

    return pa.schema([("row_key", pa.string()), ("Final Narrative", pa.string()), ("text_sha256", pa.string()),
                      *RESULT_SCHEMA])


def _chunk(ids: np.ndarray, texts: pa.Array, rng: np.random.Generator, schema: pa.Schema) -> pa.Table:
    n = len(ids)
    cols: dict[str, pa.Array] = {
        "row_key": pa.array([f"syn-{k:08d}" for k in ids]),
        "Final Narrative": texts.take(pa.array(rng.integers(0, len(texts), n))),
        "text_sha256": pa.array([f"{k:064x}" for k in ids]),
    }
    now = datetime.now(UTC)
    for f in schema:
        if f.name in cols:
            continue
        if f.name == "error":
            cols[f.name] = pa.nulls(n, f.type)
        elif f.name == "top_k":
            cols[f.name] = pa.array([[{"code": "66", "title": "Floors, walkways, ground surfaces", "prob": 0.5}] * 3] * n,
                                    type=f.type)
        elif pa.types.is_string(f.type):
            cols[f.name] = pa.array(["6620"] * n)
        elif pa.types.is_floating(f.type):
            cols[f.name] = pa.array(rng.random(n))
        elif pa.types.is_boolean(f.type):
            cols[f.name] = pa.array(np.zeros(n, dtype=bool))
        else:
            cols[f.name] = pa.array([now] * n, type=f.type)
    return pa.table(cols, schema=schema)


def run_variant(variant: str, chunks: int, ids_order: str, work: str, out_json: str) -> None:
    """In its own process: commit ``chunks`` chunks and write the per-commit figures to ``out_json``."""
    from deltalake import DeltaTable, write_deltalake

    from soi_batch.datasets.osha import read_osha_sir

    texts = pa.array(read_osha_sir()["Final Narrative"].tolist(), type=pa.string())
    rng = np.random.default_rng(0)
    ids = np.arange(chunks * CHUNK)
    if ids_order == "random":
        rng.shuffle(ids)
    schema = _chunk_schema()
    table = Path(work) / f"{variant}_{ids_order}"
    shutil.rmtree(table, ignore_errors=True)
    write_deltalake(str(table), schema.empty_table())
    me, peak, stop = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    rows = []
    for i in range(chunks):
        chunk = _chunk(ids[i * CHUNK:(i + 1) * CHUNK], texts, rng, schema)
        before = peak[0] = me.memory_info().rss
        start = time.perf_counter()
        if variant == "append":
            write_deltalake(str(table), chunk, mode="append")
        else:
            (DeltaTable(str(table))
             .merge(chunk, predicate="t.row_key = s.row_key", source_alias="s", target_alias="t",
                    streamed_exec=variant == "merge")
             .when_matched_update_all().when_not_matched_insert_all().execute())
        seconds = time.perf_counter() - start
        after = me.memory_info().rss
        rows.append({"commit": i + 1, "rss_before_mib": before // MiB, "rss_peak_mib": max(peak[0], after) // MiB,
                     "rss_after_mib": after // MiB, "seconds": round(seconds, 3)})
    stop.set()
    shutil.rmtree(table, ignore_errors=True)
    Path(out_json).write_text(json.dumps(rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--ids", choices=("sequential", "random"), default="sequential")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/delta_commit_memory"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report = {"what": __doc__.split("\n\n")[0], "chunk_rows": CHUNK, "chunks": args.chunks, "ids": args.ids,
              "machine": f"{platform.node()} {os.cpu_count()} cores, "
                         f"{psutil.virtual_memory().total / (1 << 30):.0f} GiB, shared",
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "variants": {}}
    ctx = multiprocessing.get_context("spawn")
    print(f"{'variant':20} {'commits':>7} {'RSS first':>10} {'peak max':>9} {'RSS last':>9} {'s last':>7} {'s total':>8}")
    for variant in args.variants:
        out_json = args.work / f"{variant}.json"
        proc = ctx.Process(target=run_variant, args=(variant, args.chunks, args.ids, str(args.work), str(out_json)))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"variant {variant} failed (exit code {proc.exitcode})")
        rows = json.loads(out_json.read_text())
        summary = {"rss_after_first_mib": rows[0]["rss_after_mib"],
                   "rss_peak_max_mib": max(r["rss_peak_mib"] for r in rows),
                   "rss_after_last_mib": rows[-1]["rss_after_mib"], "seconds_last": rows[-1]["seconds"],
                   "seconds_total": round(sum(r["seconds"] for r in rows), 1), "per_commit": rows}
        report["variants"][variant] = summary
        print(f"{variant:20} {len(rows):7d} {summary['rss_after_first_mib']:8d} M {summary['rss_peak_max_mib']:7d} M "
              f"{summary['rss_after_last_mib']:7d} M {summary['seconds_last']:7.2f} {summary['seconds_total']:8.1f}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
