"""CPU throughput of the classify path on real OSHA rows.

Measures, on this machine:
  * stage:  Classifier.classify_table on Arrow batches (tokenise → engine → trie scorer →
            result columns), model already loaded — the work each Ray actor does per batch;
  * cli:    `soi-batch classify` on the bundled 1,000-row sample end to end (Ray start-up,
            model load, CSV read, Parquet write), wall time of the whole process.

Prints a table and writes bench/results/cpu_throughput.json.

    python bench/cpu_throughput.py [--model DIR] [--rows 3000] [--batch-sizes 32 64 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soi_batch.classifier import Classifier, ClassifierConfig  # noqa: E402
from training.split import load_split  # noqa: E402


def bench_stage(model: str | None, texts: list[str], batch_size: int, beam: int,
                compile: bool = False) -> dict[str, float]:
    options = {"compile": True} if compile else {}
    clf = Classifier.load(model, ClassifierConfig(batch_size=batch_size, beam=beam, engine="hf",
                                                  engine_options=options))
    table = pa.table({"Final Narrative": texts})
    start = time.perf_counter()
    warm = 1024 if compile else 256  # compiled: let the dynamic-shape graphs settle first
    clf.classify_table(table.slice(0, min(warm, len(texts))), text_col="Final Narrative")
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    out = clf.classify_table(table, text_col="Final Narrative")
    elapsed = time.perf_counter() - start
    assert out.num_rows == len(texts) and out.column("error").null_count == len(texts)
    return {"rows": len(texts), "seconds": elapsed, "reports_per_s": len(texts) / elapsed,
            "batch_size": batch_size, "beam": beam, "compile": compile, "warmup_seconds": warmup}


def bench_cli(model: str | None) -> dict[str, float]:
    sample = ROOT / "soi_batch" / "data" / "osha_sir_sample.csv"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "soi_batch", "classify", str(sample), f"{tmp}/out"]
        if model:
            cmd += ["--model", model]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        elapsed = time.perf_counter() - start
    return {"rows": 1000, "seconds": elapsed, "reports_per_s": 1000 / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--compile", action="store_true", help="hf engine with torch.compile")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_throughput.json"))
    args = parser.parse_args()

    parts, _ = load_split()
    texts = parts["test"]["Final Narrative"].tolist()[: args.rows]
    results = {"stage": [bench_stage(args.model, texts, b, args.beam, args.compile) for b in args.batch_sizes]}
    if not args.skip_cli:
        results["cli"] = bench_cli(args.model)
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()}
    results["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["model"] = args.model or "embedded soi-mini"

    print(f"{'path':<28}{'rows':>7}{'seconds':>10}{'reports/s':>12}")
    for r in results["stage"]:
        print(f"{'stage, batch ' + str(r['batch_size']) + (' compiled' if r['compile'] else ''):<28}{r['rows']:>7}{r['seconds']:>10.2f}{r['reports_per_s']:>12.0f}")
    if "cli" in results:
        r = results["cli"]
        print(f"{'cli end-to-end (incl. start)':<28}{r['rows']:>7}{r['seconds']:>10.2f}{r['reports_per_s']:>12.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
