"""What Spark costs on top of the classifier: bare ``classify_table`` vs ``classify_df`` on local Spark.

The same real OSHA rows (the time-split test part) go through
  * bare:   ``Classifier.classify_table`` on one Arrow table, in this process, torch using
            ``--bare-threads`` threads (default: all ``--cores``);
  * spark:  ``classify_df`` on a cached DataFrame in ``local[--cores]`` (one partition per core,
            one torch thread per task, the model already loaded in each Python worker by a
            warm-up run), written to Parquet.
Each path gets one warm-up and one timed run.  Prints a table and appends the run (timings,
ratio spark / bare throughput — target ≥ 0.8 —, load average, date) to
bench/results/spark_overhead.json, so repeated runs on a noisy machine are kept side by side.

The model is the embedded soi-mini when it is installed; otherwise (or with ``--random``) a
random-weight Mistral bundle of soi-mini's width and depth (hidden 256, 4 layers) built on the
spot with tests/tiny.py — throughput then reflects the architecture, not trained weights.

    python bench/spark_overhead.py [--model DIR] [--rows 2000] [--cores 2] [--batch-size 64] [--bare-threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow as pa
import pyarrow.dataset as pads

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soi_batch.bundle import EMBEDDED_DEFAULT
from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.datasets.osha import load_split

TEXT = "Final Narrative"


def pick_model(model: str | None, random_model: bool, workdir: Path) -> tuple[str, str]:
    """(bundle path, description) for the run."""
    if model:
        return model, model
    if EMBEDDED_DEFAULT.is_dir() and not random_model:
        return str(EMBEDDED_DEFAULT), "embedded soi-mini"
    from tests.tiny import build_tiny_bundle

    texts = load_split()[0]["train"][TEXT].iloc[:2000].tolist()
    path = build_tiny_bundle(workdir / "random-h256-L4", texts, hidden=256, layers=4)
    return str(path), "random-weight Mistral h256-L4-i512, vocab 600 (soi-mini's width/depth; soi-mini not installed)"


def bench_bare(model: str, table: pa.Table, config: ClassifierConfig, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    clf = Classifier.load(model, config)
    clf.classify_table(table.slice(0, 256), text_col=TEXT)  # warm-up
    start = time.perf_counter()
    out = clf.classify_table(table, text_col=TEXT)
    elapsed = time.perf_counter() - start
    assert out.num_rows == table.num_rows
    return {"rows": table.num_rows, "seconds": elapsed, "reports_per_s": table.num_rows / elapsed,
            "torch_threads": threads, "errors": table.num_rows - out.column("error").null_count}


def bench_spark(model: str, table: pa.Table, batch_size: int, cores: int, workdir: Path) -> dict[str, float]:
    from pyspark.sql import SparkSession

    from soi_batch.spark import classify_df

    spark = (SparkSession.builder.master(f"local[{cores}]").appName("spark-overhead")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", str(cores))
             .config("spark.driver.memory", "4g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        df = spark.createDataFrame(table).repartition(cores).cache()
        df.count()
        warm = spark.createDataFrame(table.slice(0, 64 * cores)).repartition(cores)
        classify_df(warm, TEXT, model=model, batch_size=batch_size, engine="hf").write.parquet(str(workdir / "warm"))
        out_path = workdir / "out"
        start = time.perf_counter()
        classify_df(df, TEXT, model=model, batch_size=batch_size, engine="hf").write.parquet(str(out_path))
        elapsed = time.perf_counter() - start
        written = pads.dataset(str(out_path), format="parquet").to_table(columns=["error"])
        assert written.num_rows == table.num_rows
        return {"rows": table.num_rows, "seconds": elapsed, "reports_per_s": table.num_rows / elapsed,
                "master": f"local[{cores}]", "partitions": cores, "torch_threads_per_task": 1,
                "errors": written.num_rows - written.column("error").null_count}
    finally:
        spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="bundle directory (default: embedded soi-mini if installed)")
    parser.add_argument("--random", action="store_true", help="use the random soi-mini-sized bundle even if soi-mini exists")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bare-threads", type=int, default=None,
                        help="torch threads for the bare run (default: --cores)")
    parser.add_argument("--fresh", action="store_true", help="replace the runs in --out instead of appending")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "spark_overhead.json"))
    args = parser.parse_args()

    texts = load_split()[0]["test"][TEXT].tolist()[: args.rows]
    table = pa.table({"row": pa.array(range(len(texts)), pa.int64()), TEXT: pa.array(texts, pa.string())})
    with tempfile.TemporaryDirectory() as tmp:
        model, description = pick_model(args.model, args.random, Path(tmp))
        config = ClassifierConfig(engine="hf", batch_size=args.batch_size)
        bare = bench_bare(model, table, config, args.bare_threads or args.cores)
        spark = bench_spark(model, table, args.batch_size, args.cores, Path(tmp))
    ratio = spark["reports_per_s"] / bare["reports_per_s"]
    load = os.getloadavg()
    results = {
        "bare": bare, "spark": spark, "ratio_spark_to_bare": ratio, "target_ratio": 0.8,
        "model": description, "batch_size": args.batch_size,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1_5_15_min_at_end": load},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(f"model: {description}")
    print(f"{'path':<34}{'rows':>7}{'seconds':>10}{'reports/s':>12}")
    for label, r in ((f"bare classify_table, {bare['torch_threads']} threads", bare),
                     (f"classify_df local[{args.cores}] → Parquet", spark)):
        print(f"{label:<34}{r['rows']:>7}{r['seconds']:>10.2f}{r['reports_per_s']:>12.1f}")
    print(f"ratio spark / bare: {ratio:.2f} (target ≥ 0.80); load average at end {load[0]:.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() and not args.fresh else {}
    runs = previous.get("runs", [previous] if "bare" in previous else []) + [results]
    out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(f"{out}: {len(runs)} run(s); ratios {[round(r['ratio_spark_to_bare'], 2) for r in runs]}")


if __name__ == "__main__":
    main()
