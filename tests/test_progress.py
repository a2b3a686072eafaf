"""What a CLI run prints: one progress bar in rows and our summary, not Ray's internals.

``soi-batch classify`` on real OSHA rows in a fresh process (its own real local Ray, the tiny
bundle), stderr captured.  Ray Data's per-stage progress lines, execution plans and the workers'
library warnings (torchao's "Failed to load", torch's deprecations, weight-loading bars) used to
fill ~116 lines for 5,000 rows; with ``-v`` they come back.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "soi_batch" / "data" / "osha_sir_sample.csv"
RAY_NOISE = ("logging_progress", "Execution plan", "Running Dataset", "Progress bars disabled", "Failed to load",
             "torch/utils/_pytree", "Loading weights", ") pid=", "Token authentication")


def _env() -> dict[str, str]:
    """This checkout's package first; a local Ray of the subprocess's own."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "RAY_ADDRESS": ""}


@pytest.mark.slow
def test_classify_prints_a_row_progress_bar_and_the_summary_only(tmp_path: Path, tiny_bundle: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b"".join(SAMPLE.read_bytes().splitlines(keepends=True)[:1]) + b"".join(
        SAMPLE.read_bytes().splitlines(keepends=True)[1:301]))
    done = subprocess.run(
        [sys.executable, "-m", "soi_batch", "classify", str(src), str(tmp_path / "out"), "--model", str(tiny_bundle),
         "--num-actors", "1", "--progress"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = int(done.stdout.split("classified ", 1)[1].split(" rows", 1)[0])
    assert rows > 0 and "top sources:" in done.stdout
    bar = done.stderr.replace("\r", "\n")
    assert "classified: 100%" in bar and f"{rows}/{rows}" in bar and "rows/s" in bar
    noise = [line for line in bar.splitlines() if any(marker in line for marker in RAY_NOISE)]
    assert noise == []
    # Left: Ray's C++ core worker warns once that the actor's constructor arguments sit in the object
    # store (ray-project/ray#53727); it writes to stderr directly, below Python's logging.


NIGHTLY_COLS = ["row_key", "ID", "EventDate", "Final Narrative", "Source"]


@pytest.mark.slow
def test_nightly_prints_a_row_progress_bar_the_chunk_lines_and_the_summary(
    tmp_path: Path, osha: pd.DataFrame, tiny_bundle: Path,
) -> None:
    """The bar counts rows as the actors classify them (it sat at 0 % until the first chunk committed)."""
    write_deltalake(str(tmp_path / "input"), pa.Table.from_pandas(osha.iloc[:150][NIGHTLY_COLS], preserve_index=False))
    settings = tmp_path / "n.yml"
    settings.write_text("ray: {batch_size: 50}\nclassifier: {batch_size: 25}\n")
    done = subprocess.run(
        [sys.executable, "-m", "soi_batch", "nightly", "--config", str(settings), "--input", str(tmp_path / "input"),
         "--output", str(tmp_path / "out"), "--model", str(tiny_bundle), "--chunk-rows", "60", "--progress"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"run \w+ completed: read 150, skipped 0, classified 150 \(0 errors\)", done.stdout), done.stdout
    bar = done.stderr.replace("\r", "\n")
    assert "classified: 100%" in bar and "150/150" in bar and "rows/s" in bar
    assert [int(n) for n in re.findall(r"chunk \d+: (\d+) rows \(0 errors\)", bar)] == [60, 60, 30]
    noise = [line for line in bar.splitlines() if any(marker in line for marker in RAY_NOISE)]
    assert noise == []


@pytest.mark.slow
def test_evaluate_prints_a_row_progress_bar_for_model_scoring(tmp_path: Path, tiny_bundle: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "soi_batch", "evaluate", str(SAMPLE), "--model", str(tiny_bundle), "--limit", "40",
         "--no-baseline", "--report", str(tmp_path / "report"), "--progress"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "n=40" in done.stdout and "division.accuracy" in done.stdout
    bar = done.stderr.replace("\r", "\n")
    assert "model: 100%" in bar and "40/40" in bar and "rows/s" in bar
    assert re.search(r"scoring 40 reports with .*model scored 40 reports in [\d.]+ s", bar, re.DOTALL), bar
    noise = [line for line in bar.splitlines() if any(marker in line for marker in RAY_NOISE)]
    assert noise == []


def test_baseline_fit_logs_what_it_fits(osha: pd.DataFrame, caplog: pytest.LogCaptureFixture) -> None:
    """The fit (4-7 minutes on the whole train part) says what it fits before it starts, then its features."""
    from soi_batch.evaluation.baseline import BaselineConfig, TfidfBaseline

    rows = osha.iloc[:200]
    small = BaselineConfig(char_ngrams=(2, 3), max_features=500, level_strategy="derived", n_jobs=1, max_iter=20)
    with caplog.at_level(logging.INFO, logger="soi_batch.evaluation.baseline"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn: few rows per class, not converged; the log lines are the point
        TfidfBaseline(small).fit(rows["Final Narrative"].tolist(), rows["Source"].str.strip().tolist())
    lines = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"TF-IDF baseline: fitting word \(1, 2\) \+ char_wb \(2, 3\) n-gram features "
                        r"\(up to 500 each, min_df 2\) on 200 reports", lines[0]), lines
    assert re.fullmatch(r"TF-IDF baseline: 200 reports x 1000 features in [\d.]+ s; fitting \d+ logistic "
                        r"regressions \(1 in parallel\)", lines[1]), lines
    assert lines[2].startswith("TF-IDF baseline fitted on 200 reports, 1000 features"), lines
