"""How the nightly job's process ends, over many runs: exit codes of ``python jobs/nightly.py``.

A finished job must exit 0.  One adversarial pass saw about 1 run in 51 exit -6 (SIGABRT,
"terminate called without an active exception") after it had logged "completed"; such a fault
shows only over many runs, so this script repeats the job in fresh processes and counts.

Each run classifies the first ``--rows`` OSHA SIR reports (a Delta table written once, id ``UPA``)
with the default model on a local Ray into a fresh output table, as cron would start it.  With
several ``--checkout NAME=DIR`` (other checkouts of this repository, e.g. a patched worktree) the
runs alternate between them, so that machine load falls on each alike.  Results are written after
every run (``--out``), so a long run can be stopped (Ctrl-C, ``kill``) and still counts; the table is
printed at the end.  ``--merge A.json B.json`` prints one table over the runs of several result files
(e.g. two instances run side by side) and writes them, merged, to ``--out``.

    python bench/nightly_exit.py --runs 200 --work /tmp/nightly_exit
    python bench/nightly_exit.py --runs 100 --checkout main=. --checkout patched=/work/wt --work /tmp/ne
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "nightly_exit.json"


def write_input(path: Path, rows: int) -> None:
    """The first ``rows`` reports of the bundled OSHA SIR file as a Delta table (UPA, narrative)."""
    import deltalake

    from soi_batch.datasets.osha import read_osha_sir

    frame = read_osha_sir().iloc[:rows][["UPA", "Final Narrative"]]
    deltalake.write_deltalake(str(path), frame, mode="overwrite")


def one_run(checkout: Path, input_path: Path, work: Path, timeout: float) -> dict:
    out = work / "out"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "jobs/nightly.py", "--input", str(input_path), "--output", str(out),
                               "--id-col", "UPA", "--no-progress"], cwd=checkout, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        partial = exc.stderr or ""  # what the run wrote before it was stopped (bytes, whatever text= says)
        code, stderr = "timeout", partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    return {"exit": code, "completed": " completed in " in stderr, "seconds": round(time.perf_counter() - start, 2),
            "stderr_tail": stderr[-2000:] if code != 0 else None}


def summary(runs: list[dict]) -> dict:
    codes = [r["exit"] for r in runs]
    return {"runs": len(runs), "exit_0": codes.count(0), "exit_-6": codes.count(-6),
            "other": len(runs) - codes.count(0) - codes.count(-6),
            "completed_then_nonzero": sum(1 for r in runs if r["completed"] and r["exit"] != 0),
            "median_seconds": statistics.median(r["seconds"] for r in runs) if runs else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per checkout (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=120, help="reports each run classifies (default: %(default)s)")
    parser.add_argument("--checkout", action="append", default=None, metavar="NAME=DIR",
                        help="a checkout to run (repeatable; default: this one, as 'this')")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (input, outputs); needed to run")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a run counts as hung")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="merge these result files into --out and print their table; runs nothing")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    if args.work is None:
        parser.error("--work is needed to run (a scratch directory for the input and the outputs)")
    checkouts = dict(item.split("=", 1) for item in args.checkout) if args.checkout else {"this": str(REPO)}
    checkouts = {name: Path(path).resolve() for name, path in checkouts.items()}
    for name, path in checkouts.items():
        if not (path / "jobs" / "nightly.py").is_file():
            raise SystemExit(f"--checkout {name}={path}: no jobs/nightly.py there; pass a checkout of this repository")
    args.work.mkdir(parents=True, exist_ok=True)
    input_path = args.work / "input_delta"
    write_input(input_path, args.rows)
    result = {"script": "bench/nightly_exit.py", "started": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()}", "rows": args.rows,
              "checkouts": {name: str(path) for name, path in checkouts.items()},
              "runs": {name: [] for name in checkouts}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Ctrl-C or `kill` stops it with the runs so far counted (a shell's `cmd &` starts it with SIGINT ignored)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        for i in range(args.runs):
            for name, path in checkouts.items():
                run = one_run(path, input_path, args.work / name, args.timeout)
                result["runs"][name].append(run)
                result["summary"] = {n: summary(r) for n, r in result["runs"].items()}
                result["ended"] = datetime.now(UTC).isoformat(timespec="seconds")
                args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
                print(f"{i + 1}/{args.runs} {name}: exit {run['exit']} in {run['seconds']} s", flush=True)
    except KeyboardInterrupt:
        print("stopped; the runs so far are counted", flush=True)
    print_table(result.get("summary", {}))
    print(f"\nwritten: {args.out}")


def print_table(summaries: dict) -> None:
    print("\n| checkout | runs | exit 0 | exit -6 | other | 'completed' then non-zero | median s |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for name, s in summaries.items():
        print(f"| {name} | {s['runs']} | {s['exit_0']} | {s['exit_-6']} | {s['other']} | {s['completed_then_nonzero']} "
              f"| {s['median_seconds']} |")


def merge(paths: list[Path], out: Path) -> None:
    """Several result files as one: their runs per checkout concatenated, the summary over all."""
    parts = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    runs: dict[str, list] = {}
    for part in parts:
        for name, part_runs in part["runs"].items():
            runs.setdefault(name, []).extend(part_runs)
    merged = {"script": "bench/nightly_exit.py", "merged_from": [
        {k: part[k] for k in ("started", "ended", "machine", "rows", "checkouts")} for part in parts],
        "summary": {name: summary(r) for name, r in runs.items()}, "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    print_table(merged["summary"])
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
