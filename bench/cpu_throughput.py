"""CPU throughput of the classify path on real OSHA rows.

Measures, on this machine:
  * stage:  Classifier.classify_table on Arrow batches (tokenise → engine → trie scorer →
            result columns), model already loaded — the work each Ray actor does per batch;
  * cli:    `soi-batch classify` on the bundled 1,000-row sample end to end (Ray start-up,
            model load, CSV read, Parquet write), wall time of the whole process.

Prints a table and writes bench/results/cpu_throughput.json.

    python bench/cpu_throughput.py [--model DIR] [--rows 3000] [--batch-sizes 32 64 128]

Variants (each in a fresh process, so thread settings and compile caches do not leak):
``--variant NAME:key=value,...`` (repeatable) times ``Classifier.classify_table`` on the first
``--rows`` test-split narratives ``--repeats`` times after a warm-up, and reports the median,
min and max reports/s, the load time, the warm-up (compile) time, the load average around the
runs, and — against the first variant (``--reference``) — the fraction of identical top codes
and division codes and the max / mean |Δ confidence|, plus each variant's accuracy against
the OSHA-coded source.  Keys: ``batch_size``, ``beam`` (``none`` for the full trie),
``concurrent_batches`` (ClassifierConfig) and ``num_threads``, ``quantization``, ``dtype``,
``compile`` (HFEngineConfig).  No ``--variant``: the stage / cli runs above.

    python bench/cpu_throughput.py --model /path/to/soi-small --rows 500 --repeats 3 \
        --variant fp32: --variant int8:quantization=int8 --variant fp32-t1:num_threads=1 \
        --out bench/results/cpu_soi_small.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.datasets.osha import load_split
from training.options import parse_overrides, route_overrides


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


_CLASSIFIER_KEYS = {"batch_size", "beam", "concurrent_batches"}
_ENGINE_KEYS = {"num_threads", "quantization", "dtype", "compile"}


def parse_variant(spec: str) -> dict[str, Any]:
    """``NAME:key=value,...`` → {"name", "config": {...}, "engine_options": {...}}."""
    name, _, rest = spec.partition(":")
    values = parse_overrides(list(filter(None, rest.split(","))), parse_value=_variant_value)
    routed = route_overrides(values, {"config": _CLASSIFIER_KEYS, "engine_options": _ENGINE_KEYS},
                             what=f"variant {spec!r}")
    return {"name": name, **routed}


def _variant_value(raw: str) -> Any:
    """none/true/false, whole numbers, else the string (e.g. ``quantization=int8``)."""
    words = {"none": None, "true": True, "false": False}
    if raw.lower() in words:
        return words[raw.lower()]
    return int(raw) if raw.lstrip("-").isdigit() else raw


def run_variant(model: str | None, variant: dict[str, Any], texts: list[str], repeats: int, warmup_rows: int,
                predictions_out: str) -> dict[str, Any]:
    """One variant in this process: load, warm up, time ``repeats`` runs; predictions to a file."""
    config = {"batch_size": 64, "beam": 3, **variant["config"]}
    load_avg = [os.getloadavg()[0]]
    start = time.perf_counter()
    clf = Classifier.load(model, ClassifierConfig(engine="hf", device="cpu", engine_options=variant["engine_options"],
                                                  **config))
    load_s = time.perf_counter() - start
    table = pa.table({"Final Narrative": texts})
    start = time.perf_counter()
    clf.classify_table(table.slice(0, min(warmup_rows, len(texts))), text_col="Final Narrative")
    warmup_s = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        load_avg.append(os.getloadavg()[0])
        start = time.perf_counter()
        out = clf.classify_table(table, text_col="Final Narrative")
        seconds.append(time.perf_counter() - start)
    load_avg.append(os.getloadavg()[0])
    assert out.num_rows == len(texts) and out.column("error").null_count == len(texts)
    pq.write_table(out.select(["source_code", "confidence", "division_code", "division_confidence"]), predictions_out)
    rates = [len(texts) / s for s in seconds]
    import torch

    return {"name": variant["name"], "config": config, "engine_options": variant["engine_options"],
            "rows": len(texts), "repeats": repeats, "seconds": seconds,
            "reports_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
            "load_seconds": load_s, "warmup_rows": min(warmup_rows, len(texts)), "warmup_seconds": warmup_s,
            "torch_threads": torch.get_num_threads(), "load_average_1m": load_avg}


def agreement(ref: pa.Table, other: pa.Table) -> dict[str, float]:
    """How far ``other``'s results are from ``ref``'s, row by row."""
    dconf = np.abs(np.asarray(ref.column("confidence"), float) - np.asarray(other.column("confidence"), float))
    ddiv = np.abs(np.asarray(ref.column("division_confidence"), float)
                  - np.asarray(other.column("division_confidence"), float))
    same = np.asarray(ref.column("source_code").to_pylist()) == np.asarray(other.column("source_code").to_pylist())
    same_div = (np.asarray(ref.column("division_code").to_pylist())
                == np.asarray(other.column("division_code").to_pylist()))
    return {"same_code": float(same.mean()), "same_division": float(same_div.mean()),
            "max_abs_delta_confidence": float(dconf.max()), "mean_abs_delta_confidence": float(dconf.mean()),
            "max_abs_delta_division_confidence": float(ddiv.max()),
            "mean_abs_delta_division_confidence": float(ddiv.mean())}


def accuracy(pred: pa.Table, truth: list[str]) -> dict[str, float]:
    """Against the OSHA-coded source: exact code, division (1st digit), major group (2 digits)."""
    codes = pred.column("source_code").to_pylist()
    return {"code": float(np.mean([c == t for c, t in zip(codes, truth)])),
            "division": float(np.mean([c is not None and c[:1] == t[:1] for c, t in zip(codes, truth)])),
            "major_group": float(np.mean([c is not None and c[:2] == t[:2] for c, t in zip(codes, truth)]))}


def cpu_model_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


def busy_processes(min_cpu: float = 20.0) -> list[str]:
    """Other processes using ≥ ``min_cpu`` % CPU (ps: average over each one's life), to tell a
    quiet machine from a shared one; this benchmark's own processes are left out."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True,
                             check=True).stdout.splitlines()[1:]
    except (OSError, subprocess.CalledProcessError):
        return []
    mine = {os.getpid()}
    busy = []
    for line in out:
        pid, ppid, cpu, cmd = line.split(None, 3)
        if int(ppid) in mine:
            mine.add(int(pid))
        elif int(pid) not in mine and float(cpu) >= min_cpu and "cpu_throughput.py" not in cmd:
            busy.append(f"{float(cpu):.0f}% {cmd[:100]}")
    return busy


def bench_variants(args: argparse.Namespace, texts: list[str], truth: list[str], out: Path) -> dict[str, Any]:
    """Each variant in a fresh process; ``out`` is rewritten after each one (a stopped run keeps its part)."""
    import torch
    import transformers

    variants = [parse_variant(v) for v in args.variant]
    ref_name = args.reference or variants[0]["name"]
    preds: dict[str, pa.Table] = {}
    if args.reference_predictions:  # a reference variant timed in an earlier run (--save-predictions)
        ref_name = args.reference or Path(args.reference_predictions).stem
        preds[ref_name] = pq.read_table(args.reference_predictions)
    summary: dict[str, Any] = {
        "variants": [], "reference": ref_name, "reference_predictions": args.reference_predictions,
        "model": args.model or "embedded soi-mini",
        "data": f"first {len(texts)} narratives of the test split (soi_batch/datasets/osha.py)",
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model_name(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            pred_file, res_file = f"{tmp}/{v['name']}.parquet", f"{tmp}/{v['name']}.json"
            cmd = [sys.executable, __file__, "--one-variant", json.dumps(v), "--rows", str(args.rows),
                   "--repeats", str(args.repeats), "--warmup-rows", str(args.warmup_rows),
                   "--predictions", pred_file, "--out", res_file]
            if args.model:
                cmd += ["--model", args.model]
            busy_before = busy_processes()
            waited = time.monotonic()
            while busy_before and time.monotonic() - waited < args.wait_quiet:
                print(f"[{datetime.now(UTC):%H:%M:%S}] waiting for a quiet machine: {' | '.join(busy_before)}",
                      flush=True)
                time.sleep(20)
                busy_before = busy_processes()
            started = datetime.now(UTC)
            print(f"[{started:%H:%M:%S}] {v['name']} (load average {os.getloadavg()[0]:.2f}"
                  f"{'; busy: ' + ' | '.join(busy_before) if busy_before else ''}) ...", flush=True)
            subprocess.run(cmd, check=True)
            r = json.loads(Path(res_file).read_text())
            r["started"] = started.isoformat(timespec="seconds")
            r["other_busy_processes"] = {"before": busy_before, "after": busy_processes()}
            preds[v["name"]] = pq.read_table(pred_file)
            if args.save_predictions:
                Path(args.save_predictions).mkdir(parents=True, exist_ok=True)
                pq.write_table(preds[v["name"]], f"{args.save_predictions}/{v['name']}.parquet")
            r["accuracy_vs_osha"] = accuracy(preds[v["name"]], truth)
            if v["name"] != ref_name and ref_name in preds:
                r["agreement_with"] = ref_name
                r["agreement"] = agreement(preds[ref_name], preds[v["name"]])
            summary["variants"].append(r)
            out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def print_variants(results: dict[str, Any]) -> None:
    print(f"{'variant':<22}{'reports/s med':>14}{'min':>7}{'max':>7}{'warm-up s':>10}{'load avg':>11}"
          f"{'same code':>10}{'same div':>9}{'max|Δc|':>9}{'mean|Δc|':>9}{'div acc':>8}")
    for r in results["variants"]:
        rate, ag = r["reports_per_s"], r.get("agreement")
        la = r["load_average_1m"]
        agree = (f"{ag['same_code']:>10.3f}{ag['same_division']:>9.3f}{ag['max_abs_delta_confidence']:>9.4f}"
                 f"{ag['mean_abs_delta_confidence']:>9.4f}" if ag else f"{'(ref)':>10}{'':>27}")
        print(f"{r['name']:<22}{rate['median']:>14.2f}{rate['min']:>7.2f}{rate['max']:>7.2f}{r['warmup_seconds']:>10.1f}"
              f"{f'{min(la):.1f}-{max(la):.1f}':>11}{agree}{r['accuracy_vs_osha']['division']:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--compile", action="store_true", help="hf engine with torch.compile")
    parser.add_argument("--out", default=None,
                        help="JSON output (default bench/results/cpu_throughput.json, with --variant cpu_variants.json)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:key=value,...",
                        help="time this variant in a fresh process (repeatable); see the module docstring")
    parser.add_argument("--reference", default=None, help="variant the others are compared with (default: the first)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-rows", type=int, default=64)
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each variant, wait up to this long until no other process is busy")
    parser.add_argument("--save-predictions", default=None, metavar="DIR",
                        help="keep each variant's results as DIR/NAME.parquet")
    parser.add_argument("--reference-predictions", default=None, metavar="FILE",
                        help="compare with this saved variant (NAME.parquet) instead of the first variant")
    parser.add_argument("--one-variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--predictions", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    parts, _ = load_split()
    texts = parts["test"]["Final Narrative"].tolist()[: args.rows]
    if args.one_variant:
        result = run_variant(args.model, json.loads(args.one_variant), texts, args.repeats, args.warmup_rows,
                             args.predictions)
        Path(args.out).write_text(json.dumps(result) + "\n")
        return
    if args.variant:
        out = Path(args.out or ROOT / "bench" / "results" / "cpu_variants.json")
        truth = [str(c) for c in parts["test"]["Source"].tolist()[: args.rows]]
        print_variants(bench_variants(args, texts, truth, out))
        return
    args.out = args.out or str(ROOT / "bench" / "results" / "cpu_throughput.json")
    results = {"stage": [bench_stage(args.model, texts, b, args.beam, args.compile) for b in args.batch_sizes]}
    if not args.skip_cli:
        results["cli"] = bench_cli(args.model)
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()}
    results["date"] = datetime.now(UTC).isoformat(timespec="seconds")
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
