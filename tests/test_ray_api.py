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


def test_classify_dataset_generates_run_id_prefixes_columns_and_autoscales(tiny_bundle: Path, osha, ray_local) -> None:
    """On a real local Ray: no run_id given → one generated id on every row; ``column_prefix`` names the
    result columns; ``concurrency=(1, 2)`` is an autoscaling actor pool; results equal the classifier's."""
    import pyarrow as pa
    import ray.data

    from soi_batch.classifier import Classifier
    from soi_batch.ray_data import RayOptions, classify_dataset
    from soi_batch.schema import RESULT_SCHEMA

    rows = osha[["ID", "Final Narrative"]].iloc[:40].reset_index(drop=True)
    rows["source_code"] = "input column of that name, kept: the result is soi_source_code"
    ds = ray.data.from_pandas(rows, override_num_blocks=4)
    out = classify_dataset(ds, text_col="Final Narrative", model=tiny_bundle, column_prefix="soi_",
                           config=ClassifierConfig(batch_size=16),
                           options=RayOptions(concurrency=(1, 2), cpus_per_actor=0.5, batch_size=10))
    compute = out._logical_plan.dag.compute  # the actor pool map_batches was given (Ray internals)
    assert (compute.min_size, compute.max_size) == (1, 2)
    table = pa.concat_tables(ray.get(out.to_arrow_refs())).sort_by("ID")
    assert table.column_names == ["ID", "Final Narrative", "source_code", *("soi_" + n for n in RESULT_SCHEMA.names)]
    run_ids = set(table.column("soi_run_id").to_pylist())
    assert len(run_ids) == 1 and len(run_ids.pop()) == 32
    assert set(table.column("source_code").to_pylist()) == {rows["source_code"][0]}
    expected = Classifier.load(tiny_bundle, ClassifierConfig(batch_size=16)).classify_table(
        pa.Table.from_pandas(rows[["ID", "Final Narrative"]], preserve_index=False), text_col="Final Narrative"
    ).sort_by("ID")
    assert table.column("soi_source_code").to_pylist() == expected.column("source_code").to_pylist()
    assert table.column("soi_confidence").to_pylist() == pytest.approx(expected.column("confidence").to_pylist())


def test_classify_dataset_checks_accelerator_type_against_the_cluster(tiny_bundle: Path, osha, ray_local) -> None:
    import ray.data

    from soi_batch.ray_data import RayOptions, classify_dataset

    ds = ray.data.from_pandas(osha[["ID", "Final Narrative"]].iloc[:4])
    with pytest.raises(ConfigError, match=r"accelerator_type='H100': the Ray cluster has no such accelerator"):
        classify_dataset(ds, text_col="Final Narrative", model=tiny_bundle, options=RayOptions(accelerator_type="H100"))


def test_actors_leave_a_cpu_for_reads_on_a_local_ray(tiny_bundle: Path, osha, ray_local, caplog) -> None:
    """The session's local Ray has 2 CPUs: two actors of 1 CPU would leave Ray Data's read tasks
    none and the run would wait forever (found: ``--ray-num-cpus 1`` hung the nightly job for 10
    minutes). By default the two actors get half a CPU each and the run finishes; a CPU count set by
    the user that leaves none is refused before the Dataset runs."""
    import ray.data

    from soi_batch.ray_data import RayOptions, classify_dataset

    ds = ray.data.from_pandas(osha[["ID", "Final Narrative"]].iloc[:6])
    with pytest.raises(ConfigError, match=r"the Ray cluster has 2 CPU\(s\) and the classify actors reserve 2 of them "
                                          r"\(2 actor\(s\) × 1 CPU\).*--ray-num-cpus.*--num-actors / --cpus-per-actor"):
        classify_dataset(ds, text_col="Final Narrative", model=tiny_bundle,
                         options=RayOptions(num_actors=2, cpus_per_actor=1))
    with pytest.raises(ConfigError, match=r"reserve 3 of them \(3 actor\(s\) × 1 CPU\)"):
        classify_dataset(ds, text_col="Final Narrative", model=tiny_bundle,
                         options=RayOptions(concurrency=(3, 4), cpus_per_actor=1.0))
    with caplog.at_level("INFO", logger="soi_batch.ray_data"):
        out = classify_dataset(ds, text_col="Final Narrative", model=tiny_bundle,
                               options=RayOptions(num_actors=2)).to_pandas()
    assert "each of the 2 classify actor(s) reserves 0.5 of them" in caplog.text
    assert len(out) == 6 and out["error"].isna().all()


def test_a_cluster_that_may_scale_up_gets_a_warning_not_an_error(monkeypatch, caplog, ray_local) -> None:
    """A cluster this process did not start (``ray.init(address=…)``) may add nodes: warned, not refused."""
    from soi_batch import ray_data

    monkeypatch.setattr(ray_data, "_started_here", lambda: False)
    with caplog.at_level("WARNING", logger="soi_batch.ray_data"):
        assert ray_data._cpus_per_actor(2, 1.0) == 1.0
    assert "reserve 2 of them" in caplog.text and "unless the cluster scales up" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="soi_batch.ray_data"):  # the default is 1 CPU there, warned alike
        assert ray_data._cpus_per_actor(2, None) == 1.0
    assert "reserve 2 of them" in caplog.text and "unless the cluster scales up" in caplog.text
    monkeypatch.undo()
    assert ray_data._started_here()  # the session's Ray was started by this process
    assert ray_data._cpus_per_actor(1, 1.0) == 1.0  # 1 of 2 reserved: room for reads


@pytest.mark.parametrize("kwargs, match", [
    ({"concurrency": 0}, "concurrency must be"),
    ({"concurrency": (3, 2)}, "concurrency must be"),
    ({"concurrency": (1, 2, 3)}, "concurrency must be"),
    ({"concurrency": 2, "num_actors": 2}, "not both"),
    ({"accelerator_type": ""}, "accelerator_type must be"),
    ({"accelerator_type": "A10G", "gpus_per_actor": 0}, "drop one of them"),
])
def test_ray_options_refuse_settings_ray_would_reject_later(kwargs: dict, match: str) -> None:
    from soi_batch.ray_data import RayOptions

    with pytest.raises(ConfigError, match=match):
        RayOptions(**kwargs)
