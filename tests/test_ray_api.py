"""``classify_dataset`` and ``init_ray`` as a Python user calls them, on a real local Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from soi_batch.classifier import ClassifierConfig
from soi_batch.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_ray_address_auto_without_a_cluster_is_one_line_naming_the_address_and_the_fix(tmp_path: Path) -> None:
    """``--ray-address auto`` with no Ray running: exit 2 and one line, not a ConnectionError traceback.

    "No Ray running" in a subprocess: an empty Ray temp dir, and Ray's scan for other local Rays'
    GCS processes (other test sessions on this machine) returns none."""
    reports = tmp_path / "reports.csv"
    reports.write_text('id,Final Narrative\n1,"An employee fell from a ladder."\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(tmp_path / "ray"), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    (tmp_path / "ray").mkdir()
    code = ("import functools, sys, ray._private.services as s; s.find_gcs_addresses = functools.cache(lambda: []); "
            "from soi_batch.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "classify", str(reports), str(tmp_path / "out"),
                           "--ray-address", "auto"], check=False, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("soi-batch classify: error: cannot connect to the Ray cluster")
    assert "address 'auto'" in lines[0] and "ray start --head" in lines[0] and "--ray-address" in lines[0]


def test_classify_dataset_refuses_fp8_on_cpu_actors_before_the_dataset_runs(tiny_bundle: Path, osha, ray_local) -> None:
    import ray.data

    from soi_batch.ray_data import RayOptions, classify_dataset

    ds = ray.data.from_pandas(osha[["ID", "Final Narrative"]].iloc[:8])
    with pytest.raises(ConfigError, match=r"quantization='fp8' needs a GPU"):
        classify_dataset(ds, text_col="Final Narrative", model=tiny_bundle, run_id="r",
                         config=ClassifierConfig(engine="hf", engine_options={"quantization": "fp8"}),
                         options=RayOptions(gpus_per_actor=0))
