"""The entry points: ``soi-batch nightly`` and ``jobs/nightly.py`` are one command with one set of options.

Real OSHA rows in a real Delta table, the tiny random Mistral bundle, the session's local Ray.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from soi_batch.cli import main
from soi_batch.nightly.manifest import RunManifest

REPO = Path(__file__).resolve().parents[1]
NIGHTLY_SCRIPT = REPO / "jobs" / "nightly.py"
COLS = ["row_key", "ID", "EventDate", "Final Narrative", "Source"]
# the flags jobs/nightly.py has always had: its users' crontabs and DAGs pass them
NIGHTLY_FLAGS = {"-h", "--help", "--config", "--input", "--output", "--model", "--cache-dir", "--id-col", "--text-col",
                 "--input-format", "--ray-address", "--ray-num-cpus", "--manifest-dir", "--chunk-rows",
                 "--retry-errors", "-v", "--verbose", "--progress", "--no-progress"}


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def _options_section(help_text: str) -> str:
    """The help text after the usage lines (which name the program)."""
    return help_text[help_text.index("\n\n"):]


def test_version_names_the_package_version_and_the_default_model(capsys) -> None:
    from soi_batch import __version__
    from soi_batch.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"soi-batch {__version__} (default model: soi-mini)"


def test_nightly_script_and_subcommand_have_the_same_options() -> None:
    script, sub = _run(str(NIGHTLY_SCRIPT), "--help"), _run("-m", "soi_batch", "nightly", "--help")
    assert script.returncode == sub.returncode == 0, script.stderr + sub.stderr
    assert script.stdout.startswith("usage: nightly ") and sub.stdout.startswith("usage: soi-batch nightly ")
    assert _options_section(script.stdout) == _options_section(sub.stdout)
    flags = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", _options_section(script.stdout)))
    assert flags == NIGHTLY_FLAGS


def test_nightly_bad_settings_exit_2_before_any_work(tmp_path: Path) -> None:
    """A bad setting stops both entry points before any work: exit code 2, an error naming the setting."""
    settings = tmp_path / "n.yml"
    settings.write_text(f"input: {tmp_path / 'in'}\noutput: {tmp_path / 'out'}\nchunk_rows: 0\n")
    for args, prefix in (([str(NIGHTLY_SCRIPT)], "nightly: error: "),
                         (["-m", "soi_batch", "nightly"], "soi-batch nightly: error: ")):
        done = _run(*args, "--config", str(settings))
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(prefix) and "chunk_rows" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "out").exists() and not (tmp_path / "out_manifests").exists()


def test_soi_batch_nightly_classifies_into_delta_then_the_script_skips_what_is_done(
    tmp_path: Path, osha: pd.DataFrame, tiny_bundle: Path, ray_local, capsys: pytest.CaptureFixture[str],
) -> None:
    rows = osha.iloc[:150][COLS].reset_index(drop=True)
    write_deltalake(str(tmp_path / "input"), pa.Table.from_pandas(rows, preserve_index=False))
    settings = tmp_path / "n.yml"  # the YAML gives the Ray batch size, the flags the rest
    settings.write_text("ray: {batch_size: 50}\nclassifier: {batch_size: 25}\n")
    args = ["--config", str(settings), "--input", str(tmp_path / "input"), "--output", str(tmp_path / "out"),
            "--model", str(tiny_bundle), "--chunk-rows", "60"]

    assert main(["nightly", *args]) == 0
    first = capsys.readouterr().out
    assert re.search(r"run \w+ completed: read 150, skipped 0, classified 150 \(0 errors\)", first), first
    out = DeltaTable(str(tmp_path / "out")).to_pyarrow_dataset().to_table().to_pandas()
    assert len(out) == 150 and out["row_key"].is_unique and set(out["row_key"]) == set(rows["row_key"])
    by_id = out.set_index("row_key").loc[rows["row_key"]]
    assert list(by_id["Final Narrative"]) == list(rows["Final Narrative"])
    assert (out["model_id"] == "tiny-random@0").all() and out["error"].isna().all()
    assert out["source_code"].notna().all() and out["division_code"].str.len().eq(1).all()
    assert all(code.startswith(division) for code, division in zip(out["source_code"], out["division_code"]))
    manifests = [RunManifest.model_validate_json(p.read_text()) for p in (tmp_path / "out_manifests").glob("run-*.json")]
    assert len(manifests) == 1 and manifests[0].chunks_committed == 3  # 150 rows, --chunk-rows 60
    assert manifests[0].config["chunk_rows"] == 60 and manifests[0].config["ray"] == {"batch_size": 50}

    script = runpy.run_path(str(NIGHTLY_SCRIPT))  # the scheduled entry point, in this process's Ray
    assert script["main"](args) == 0
    second = capsys.readouterr().out
    assert re.search(r"completed: read 150, skipped 150, classified 0 ", second), second
    assert DeltaTable(str(tmp_path / "out")).to_pyarrow_dataset().count_rows() == 150
