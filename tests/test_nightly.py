"""The nightly job: incremental selection, MERGE without duplicates, crash and actor-kill recovery.

Real local Ray (the session's ``ray_local``), real Delta tables under tmp_path, real OSHA rows,
the tiny random Mistral bundle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from soi_batch.bundle import load_bundle, write_manifest
from soi_batch.errors import ConfigError, InputSchemaError
from soi_batch.nightly import NightlyConfig, run_nightly
from soi_batch.nightly.manifest import RunManifest, total_variation
from soi_batch.nightly.runs import RunLock
from soi_batch.nightly.select import TEXT_SHA_COL, InputSource, RowBits, open_state, select_rows
from soi_batch.nightly.sink import NEW_ID_COL, ConcurrentWriteError, DeltaSink
from soi_batch.tables import INVALID_UTF8_ERROR, inspect_input

REPO = Path(__file__).resolve().parents[1]
COLS = ["row_key", "ID", "EventDate", "Final Narrative", "Source"]


def _rows(osha: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    return osha.iloc[start:stop][COLS].reset_index(drop=True)


def _write(path: Path, df: pd.DataFrame, mode: str = "overwrite") -> None:
    write_deltalake(str(path), pa.Table.from_pandas(df, preserve_index=False), mode=mode)


def _output(path: Path) -> pd.DataFrame:
    return DeltaTable(str(path)).to_pyarrow_dataset().to_table(
        columns=["row_key", "Final Narrative", "text_sha256", "model_id", "source_code", "division_code", "error", "run_id"]
    ).to_pandas()


def _config(tmp: Path, bundle: Path, **kw) -> NightlyConfig:
    return NightlyConfig(input=str(tmp / "input"), output=str(tmp / "out"), model=str(bundle),
                         chunk_rows=kw.pop("chunk_rows", 100), ray={"batch_size": 100}, **kw)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def bundle_v1(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights under a new model version: every row must be re-classified."""
    out = tmp_path_factory.mktemp("tiny_v1") / "bundle"
    shutil.copytree(tiny_bundle, out)
    manifest = load_bundle(out).manifest.model_copy(update={"model_version": "1"})
    write_manifest(out, manifest)
    return out


def test_config_from_yaml_and_overrides(tmp_path: Path) -> None:
    y = tmp_path / "n.yml"
    y.write_text("input: a\noutput: b\nchunk_rows: 7\nclassifier: {batch_size: 8}\nray: {num_actors: 2}\n")
    c = NightlyConfig.build(y, output="c", chunk_rows=None)
    assert (c.input, c.output, c.chunk_rows) == ("a", "c", 7)
    assert c.classifier_config().batch_size == 8 and c.ray_options().num_actors == 2
    assert c.resolved_manifest_dir == "c_manifests"
    example = NightlyConfig.build(REPO / "jobs" / "nightly.example.yml")
    assert example.chunk_rows == 5000 and example.classifier_config().engine == "auto"
    assert example.ray_options().batch_size is None
    with pytest.raises(ConfigError, match="max_restarts"):  # an unknown Ray setting fails at build time
        NightlyConfig.build(y, ray={"max_restarts": 3})
    with pytest.raises(ConfigError, match="chunk_rows"):
        NightlyConfig.build(y, chunk_rows=0)
    with pytest.raises(ConfigError, match="nope"):
        NightlyConfig.build(y, nope=1)


def test_row_bits() -> None:
    bits = RowBits(21)
    bits.set([0, 7, 8, 20])
    assert list(bits.get(0, 21).nonzero()[0]) == [0, 7, 8, 20]
    assert list(bits.get(5, 5)) == [False, False, True, True, False]  # rows 5..9, across a byte boundary


def test_selection_is_the_same_in_one_bucket_or_many(tmp_path: Path, osha: pd.DataFrame) -> None:
    """Bucketing bounds the driver's memory; it must not change what is selected or why."""
    rows = _rows(osha, 0, 120)
    dups = rows.iloc[[3, 50, 99]].copy()
    dups["Final Narrative"] = dups["Final Narrative"] + " (amended)"
    nulls = rows.iloc[[5]].copy()
    nulls["row_key"] = None
    _write(tmp_path / "input", pd.concat([rows, dups, nulls], ignore_index=True))
    state = rows.iloc[:80][["row_key"]].copy()  # 80 known ids: 60 current, 10 text changed, 10 other model
    state[TEXT_SHA_COL] = [_sha(t) for t in rows["Final Narrative"].iloc[:80]]
    state.loc[60:69, TEXT_SHA_COL] = "0" * 64
    state["model_id"] = ["m@1"] * 70 + ["m@0"] * 10
    state["error"] = [None] * 79 + ["failed"]
    _write(tmp_path / "out", state)
    source = InputSource.open(inspect_input(str(tmp_path / "input")))

    def select(bucket_rows: int):
        return select_rows(source, open_state(str(tmp_path / "out"), "row_key"), id_col="row_key",
                           text_col="Final Narrative", model_id="m@1", work_dir=tmp_path / "w",
                           retry_errors=True, bucket_rows=bucket_rows)

    one, many = select(10_000), select(7)
    assert (one.buckets, many.buckets) == (1, 18) and not (tmp_path / "w").exists()
    assert one.reasons == many.reasons == {"new": 40, "text_changed": 12, "model_changed": 10, "retry_error": 0}
    for sel in (one, many):
        assert (sel.rows_read, sel.duplicate_ids_dropped, sel.null_ids_dropped) == (124, 3, 1)
        assert sel.up_to_date == 120 - 62 and sel.selected == 62  # 120 distinct ids
    n = one.rows_read
    assert (one.selected_rows.get(0, n) == many.selected_rows.get(0, n)).all()
    assert (one.new_ids.get(0, n) == many.new_ids.get(0, n)).all()
    selected = set(one.selected_rows.get(0, n).nonzero()[0])
    # ids 3, 50, 99 reappear amended at positions 120-122: the last row wins; 123 has no id
    assert selected == set(range(60, 80)) | set(range(80, 120)) - {99} | {120, 121, 122}
    assert set(one.new_ids.get(0, n).nonzero()[0]) == set(range(80, 120)) - {99} | {122}


def test_sink_appends_new_ids_merges_known_and_stops_on_another_writer(tmp_path: Path) -> None:
    schema = pa.schema([("row_key", pa.string()), ("label", pa.string())])
    sink = DeltaSink(str(tmp_path / "out"), "row_key", schema, run_id="r1")
    assert sink.ensure_table() == 0

    def chunk(keys: list[str], label: str, new: list[bool]) -> pa.Table:
        return pa.table({"row_key": keys, "label": [label] * len(keys), NEW_ID_COL: new})

    first = sink.commit(chunk(["a", "b"], "x", [True, True]))
    assert (first.version, first.inserted, first.updated, first.commits) == (1, 2, 0, 1)
    mixed = sink.commit(chunk(["b", "c"], "y", [False, True]))
    assert (mixed.version, mixed.inserted, mixed.updated, mixed.commits) == (3, 1, 1, 2)
    table = DeltaTable(str(tmp_path / "out"))
    assert [h["operation"] for h in table.history()][:2] == ["MERGE", "WRITE"]
    assert dict(zip(*table.to_pyarrow_dataset().to_table().to_pydict().values())) == {"a": "x", "b": "y", "c": "y"}

    write_deltalake(str(tmp_path / "out"), pa.table({"row_key": ["z"], "label": ["other job"]}), mode="append")
    with pytest.raises(ConcurrentWriteError, match="another writer committed to the table"):
        sink.commit(chunk(["d"], "y", [True]))
    assert DeltaTable(str(tmp_path / "out")).to_pyarrow_dataset().count_rows() == 4  # nothing of "d" written


def _chunk(keys: list[str], label: str, new: list[bool]) -> pa.Table:
    return pa.table({"row_key": keys, "label": [label] * len(keys), NEW_ID_COL: new})


@pytest.mark.parametrize("operation", ["append", "merge"])
def test_second_writer_between_read_and_commit_is_refused_by_the_table(tmp_path: Path, operation: str) -> None:
    """Forced interleaving: writer B commits after writer A has read the table and before A commits.

    Both selected the same 200 ids as new (or known); before, A's commit went through too (400 rows
    for 200 ids after two appends) and A noticed only afterwards."""
    uri = str(tmp_path / "out")
    schema = pa.schema([("row_key", pa.string()), ("label", pa.string())])
    keys = [f"sir-{i:05d}" for i in range(200)]
    setup = DeltaSink(uri, "row_key", schema, run_id="setup")
    setup.ensure_table()
    if operation == "merge":
        setup.commit(_chunk(keys, "old", [True] * 200))
    a = DeltaSink(uri, "row_key", schema, run_id="job-a")
    b = DeltaSink(uri, "row_key", schema, run_id="job-b")
    assert a.ensure_table() == b.ensure_table()
    new = operation == "append"
    seen: list[str] = []

    def b_commits_now(op: str) -> None:
        seen.append(op)
        b.commit(_chunk(keys, "b", [new] * 200))  # a second handle, a real commit

    a.before_commit = b_commits_now
    with pytest.raises(ConcurrentWriteError, match=f"(?i)another writer committed.*this {operation} was not committed"):
        a.commit(_chunk(keys, "a", [new] * 200))
    assert seen == [operation]
    table = DeltaTable(uri)
    rows = table.to_pyarrow_dataset().to_table().to_pandas()
    assert len(rows) == 200 and rows["row_key"].is_unique and set(rows["label"]) == {"b"}
    assert {h.get("soi_batch_run_id") for h in table.history()} >= {"job-b"}
    assert "job-a" not in {h.get("soi_batch_run_id") for h in table.history()}


def test_duplicate_ids_in_the_output_are_repaired_in_one_commit(tmp_path: Path) -> None:
    uri = str(tmp_path / "out")
    rows = pa.table({"row_key": ["a", "b", "c", "b", "c", "c", "it's"] + ["it's"],
                     "error": [None, None, "failed", "failed", None, "failed", None, None],
                     "label": ["a", "b1", "c1", "b2", "c2", "c3", "q1", "q2"]})
    write_deltalake(uri, rows.slice(0, 4))
    write_deltalake(uri, rows.slice(4), mode="append")
    sink = DeltaSink(uri, "row_key", rows.schema, run_id="r")
    assert sink.ensure_table() == 1
    assert sorted(sink.duplicate_ids()) == ["b", "c", "it's"]
    assert sink.repair_duplicate_ids() == ["b", "c", "it's"]
    table = DeltaTable(uri)
    assert table.version() == 2 == sink.version and table.history()[0]["operation"] == "WRITE"
    kept = dict(zip(*table.to_pyarrow_dataset().to_table(columns=["row_key", "label"]).to_pydict().values()))
    assert kept == {"a": "a", "b": "b1", "c": "c2", "it's": "q2"}  # a row without error; else the last read
    assert table.to_pyarrow_dataset().count_rows() == 4 and sink.repair_duplicate_ids() == []


def test_total_variation() -> None:
    assert total_variation({"1": 0.5, "2": 0.5}, {"1": 0.5, "2": 0.5}) == 0.0
    assert total_variation({"1": 1.0}, {"2": 1.0}) == 1.0
    assert total_variation({}, {"1": 1.0}) is None


def test_incremental_runs(tmp_path: Path, osha: pd.DataFrame, tiny_bundle: Path, bundle_v1: Path, ray_local) -> None:
    base = _rows(osha, 0, 300)
    base.loc[[2, 7], "Final Narrative"] = ""  # cannot be scored: committed with `error`, never dropped
    dups = base.iloc[[3, 10, 20]].copy()
    dups["Final Narrative"] = dups["Final Narrative"] + " (amended)"  # same id later in input: last wins
    _write(tmp_path / "input", pd.concat([base, dups], ignore_index=True))

    from ray.data import DataContext

    process_context = DataContext.get_current()
    bars_before = process_context.enable_progress_bars
    m1 = run_nightly(_config(tmp_path, tiny_bundle, ray_progress_bars=not bars_before))
    assert process_context.enable_progress_bars is bars_before  # set on the run's Datasets, not the process
    out = _output(tmp_path / "out")
    assert (m1.status, m1.counts.read, m1.counts.duplicate_ids_dropped) == ("completed", 303, 3)
    assert m1.counts.classified == 300 and m1.counts.inserted == 300 and m1.chunks_committed == 3
    assert len(out) == 300 and out["row_key"].is_unique and set(out["row_key"]) == set(base["row_key"])
    kept = out.set_index("row_key").loc[dups["row_key"]]
    assert list(kept["Final Narrative"]) == list(dups["Final Narrative"])
    assert list(kept["text_sha256"]) == [_sha(t) for t in dups["Final Narrative"]]
    assert m1.counts.errors == 2 and set(out.loc[out["error"].notna(), "row_key"]) == {"sir-00002", "sir-00007"}
    assert (out["model_id"] == "tiny-random@0").all() and out["source_code"].notna().sum() == 298
    assert m1.input_version == 0 and m1.output_version_end == m1.output_version_start + 3
    assert sum(m1.label_distribution.values()) == pytest.approx(1.0)

    m2 = run_nightly(_config(tmp_path, tiny_bundle))  # nothing new: no Ray work, no commit
    assert (m2.counts.classified, m2.counts.skipped, m2.chunks_committed) == (0, 300, 0)
    assert m2.output_version_end == m1.output_version_end and m2.previous_run_id == m1.run_id
    assert m2.label_shift_tvd_table == 0.0

    # 100 new rows + 5 changed texts (+ the 2 error rows, on request) in one run: exactly those
    current = DeltaTable(str(tmp_path / "input")).to_pyarrow_dataset().to_table().to_pandas()
    changed_ids = ["sir-00005", "sir-00050", "sir-00150", "sir-00250", "sir-00299"]
    changed = current["row_key"].isin(changed_ids)
    current.loc[changed, "Final Narrative"] = "Employee was struck by a falling pallet jack and fractured a foot."
    _write(tmp_path / "input", pd.concat([current, _rows(osha, 300, 400)], ignore_index=True))
    m3 = run_nightly(_config(tmp_path, tiny_bundle, retry_errors=True))
    assert m3.counts.selected_by_reason == {"new": 100, "text_changed": 5, "model_changed": 0, "retry_error": 2}
    assert (m3.counts.classified, m3.counts.inserted, m3.counts.updated) == (107, 100, 7)
    assert m3.counts.skipped == 293 and m3.input_version == 1
    # new ids are appended (no scan of the output), known ids MERGEd
    m3_ops = {h["operation"] for h in DeltaTable(str(tmp_path / "out")).history()
              if h.get("soi_batch_run_id") == m3.run_id}
    assert m3_ops == {"WRITE", "MERGE"}
    out = _output(tmp_path / "out")
    assert len(out) == 400 and out["row_key"].is_unique
    new_text = _sha("Employee was struck by a falling pallet jack and fractured a foot.")
    assert set(out.loc[out["text_sha256"] == new_text, "row_key"]) == set(changed_ids)
    assert set(out.loc[out["run_id"] == m3.run_id, "row_key"]) == (
        set(changed_ids) | {"sir-00002", "sir-00007"} | set(_rows(osha, 300, 400)["row_key"]))
    assert m3.label_shift_reference_run_id == m1.run_id and m3.previous_run_id == m2.run_id
    assert m3.label_shift_tvd == pytest.approx(total_variation(m3.label_distribution, m1.label_distribution))

    m4 = run_nightly(_config(tmp_path, bundle_v1))  # a new model version re-classifies everything
    assert m4.counts.classified == 400 and m4.counts.selected_by_reason["model_changed"] == 400
    out = _output(tmp_path / "out")
    assert len(out) == 400 and out["row_key"].is_unique and (out["model_id"] == "tiny-random@1").all()
    assert run_nightly(_config(tmp_path, bundle_v1)).counts.classified == 0

    manifests = sorted((tmp_path / "out_manifests").glob("run-*.json"))
    assert len(manifests) == 5 and not (tmp_path / "out_manifests" / "_staging").exists()
    loaded = [RunManifest.model_validate_json(p.read_text()) for p in manifests]
    assert {m.run_id for m in loaded[:4]} == {m.run_id for m in (m1, m2, m3, m4)}
    assert all(m.status == "completed" and m.ended_at and m.wall_seconds for m in loaded)


def test_run_repairs_duplicate_ids_and_keeps_a_live_runs_staging(
        tmp_path: Path, osha: pd.DataFrame, tiny_bundle: Path, ray_local, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path / "input", _rows(osha, 0, 100))
    first = run_nightly(_config(tmp_path, tiny_bundle))
    assert first.status == "completed" and first.counts.inserted == 100
    # 30 ids twice in the output, as two writers committing the same chunk left them
    out = DeltaTable(str(tmp_path / "out"))
    again = out.to_pyarrow_dataset().to_table().slice(10, 30)
    write_deltalake(str(tmp_path / "out"), again, mode="append")
    doubled = sorted(again.column("row_key").to_pylist())
    # another job sharing the staging folder is running (holds its lock); a killed one left its staging
    staging = tmp_path / "out_manifests" / "_staging"
    live = RunLock(staging, "live-run")
    (staging / "live-run").mkdir()
    (staging / "live-run" / "part-00000.parquet").write_bytes(b"in use")
    (staging / "dead-run").mkdir()
    (staging / "dead-run.lock").write_text("4242\n")
    _write(tmp_path / "input", _rows(osha, 0, 120))
    try:
        with caplog.at_level("WARNING", logger="soi_batch.nightly"):
            m = run_nightly(_config(tmp_path, tiny_bundle))
        assert (staging / "live-run" / "part-00000.parquet").read_bytes() == b"in use"
        assert not (staging / "dead-run").exists() and not (staging / "dead-run.lock").exists()
    finally:
        live.release()
    assert m.status == "completed" and m.counts.duplicate_ids_repaired == 30 and m.counts.repaired_ids == doubled
    assert any("held 30 id(s) more than once" in r.getMessage() for r in caplog.records)
    assert m.counts.classified == 20 and m.counts.skipped == 100
    result = _output(tmp_path / "out")
    assert len(result) == 120 and result["row_key"].is_unique
    assert m.output_version_end == m.output_version_start + 2  # the repair, then one append
    saved = RunManifest.model_validate_json(next(
        p for p in (tmp_path / "out_manifests").glob("run-*.json") if m.run_id[:8] in p.name).read_text())
    assert saved.counts.repaired_ids == doubled


def _descendants_matching(root: int, needle: str) -> list[psutil.Process]:
    found = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            if needle in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _committed_rows(out: Path) -> int:
    try:
        table = DeltaTable(str(out))
    except Exception:  # noqa: BLE001 - not created yet
        return 0
    return table.to_pyarrow_dataset().count_rows()


@pytest.mark.slow
def test_sigkill_job_then_rerun(tmp_path: Path, osha: pd.DataFrame, tiny_bundle: Path, ray_local) -> None:
    n = 1500
    _write(tmp_path / "input", _rows(osha, 0, n))
    (tmp_path / "n.yml").write_text("ray: {batch_size: 50}\nclassifier: {batch_size: 25}\n")
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, str(REPO / "jobs" / "nightly.py"), "--config", str(tmp_path / "n.yml"),
           "--input", str(tmp_path / "input"), "--output", str(tmp_path / "out"), "--model", str(tiny_bundle),
           "--chunk-rows", "50", "--ray-address", address]
    with open(tmp_path / "job.log", "wb") as log:
        job = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while _committed_rows(tmp_path / "out") < 50:
            assert job.poll() is None, (tmp_path / "job.log").read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no chunk committed in 120 s"
            time.sleep(0.05)
        assert job.poll() is None
        children = job.pid and psutil.Process(job.pid).children(recursive=True)
        os.kill(job.pid, signal.SIGKILL)
        job.wait(10)
    finally:
        if job.poll() is None:
            job.kill()
    for child in children or []:  # processes the killed job started itself, if any survived it
        if child.is_running():
            child.kill()
    committed = _committed_rows(tmp_path / "out")
    assert 50 <= committed < n, f"kill did not land mid-run ({committed} of {n} rows committed)"
    paths = list((tmp_path / "out_manifests").glob("run-*.json"))
    crashed = [RunManifest.model_validate_json(p.read_text()) for p in paths]
    assert [m.status for m in crashed] == ["running"] and crashed[0].counts.classified == 0

    m = run_nightly(_config(tmp_path, tiny_bundle, chunk_rows=500))
    assert m.counts.skipped == committed and m.counts.classified == n - committed
    # the killed run's manifest now says what it committed (from the table's commit metadata)
    killed = RunManifest.model_validate_json(paths[0].read_text())
    assert killed.status == "interrupted" and m.run_id in killed.error
    assert killed.counts.classified == killed.counts.inserted == committed and killed.chunks_committed == committed // 50
    assert killed.output_version_end == m.output_version_start
    out = _output(tmp_path / "out")
    assert len(out) == n and out["row_key"].is_unique and set(out["row_key"]) == set(_rows(osha, 0, n)["row_key"])
    assert out["source_code"].notna().all()


@pytest.mark.slow
def test_actor_killed_mid_run_is_restarted(tmp_path: Path, osha: pd.DataFrame, tiny_bundle: Path, ray_local) -> None:
    n = 1500
    _write(tmp_path / "input", _rows(osha, 0, n))
    out_path = tmp_path / "out"
    killed: list[tuple[int, int]] = []  # (pid, rows committed when killed)
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            rows = _committed_rows(out_path)
            actors = _descendants_matching(os.getpid(), "MapWorker(MapBatches(ClassifyBatch))")
            if rows >= 50 and actors:
                os.kill(actors[0].pid, signal.SIGKILL)
                killed.append((actors[0].pid, rows))
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        config = NightlyConfig(input=str(tmp_path / "input"), output=str(out_path), model=str(tiny_bundle),
                               chunk_rows=50, ray={"batch_size": 50}, classifier={"batch_size": 25})
        m = run_nightly(config)
    finally:
        stop.set()
        thread.join(5)
    assert killed, "the MapWorker actor was never found and killed"
    assert killed[0][1] < n, "the actor was killed only after every row was committed"
    assert not psutil.pid_exists(killed[0][0]) or psutil.Process(killed[0][0]).status() == psutil.STATUS_ZOMBIE
    assert m.status == "completed" and m.counts.classified == n
    out = _output(out_path)
    assert len(out) == n and out["row_key"].is_unique and out["source_code"].notna().all()


OSHA_REPEATED_IDS = ["2015010015", "2015010016", "2015010018", "2015010020", "2015010021"]
"""IDs that OSHA's 2015-2016 file gives to two different incidents each (other dates, employers)."""


def test_osha_key_documented_in_the_readme_is_unique(osha: pd.DataFrame) -> None:
    """The README tells OSHA users which key to use: check it on the real 2015-2016 file."""
    assert len(osha) == 19_947
    repeated = osha.loc[osha["ID"].duplicated(keep=False)]
    assert sorted(repeated["ID"].unique()) == OSHA_REPEATED_IDS and len(repeated) == 10
    assert not osha.duplicated(["ID", "EventDate"]).any() and osha["UPA"].is_unique
    readme = (REPO / "README.md").read_text()
    assert "--id-col ID --id-col EventDate" in readme and "--id-col UPA" in readme


def test_float_null_and_composite_ids_are_checked_before_any_work(tmp_path: Path, osha: pd.DataFrame,
                                                                  tiny_bundle: Path) -> None:
    rows = _rows(osha, 0, 20)
    floats = rows.assign(ID=[-0.0, 0.0, float("nan")] + [float(i) for i in range(17)])
    _write(tmp_path / "input", floats)
    with pytest.raises(InputSchemaError, match=r"id column 'ID' holds double.*-0\.0 and 0\.0.*astype\('Int64'\)"):
        run_nightly(_config(tmp_path, tiny_bundle, id_col="ID"))
    with pytest.raises(InputSchemaError, match="id column 'ID' holds double"):  # in a composite key too
        run_nightly(_config(tmp_path, tiny_bundle, id_col=["ID", "EventDate"]))
    assert not (tmp_path / "out").exists()
    write_deltalake(str(tmp_path / "input"), pa.Table.from_pandas(rows.assign(soi_key="x"), preserve_index=False),
                    mode="overwrite", schema_mode="overwrite")
    with pytest.raises(InputSchemaError, match="already has a column 'soi_key'"):
        run_nightly(_config(tmp_path, tiny_bundle, id_col=["ID", "EventDate"]))
    with pytest.raises(InputSchemaError, match="id column 'Nope' not found"):
        run_nightly(_config(tmp_path, tiny_bundle, id_col=["ID", "Nope"]))
    for bad in ([], ["ID", "ID"], ["ID", ""]):
        with pytest.raises(ConfigError, match="id_col"):
            NightlyConfig(input="a", output="b", id_col=bad)
    from soi_batch.commands.nightly import build_parser, run  # noqa: F401 - the flags as users type them

    args = build_parser().parse_args(["--input", "a", "--output", "b", "--id-col", "ID", "--id-col", "EventDate"])
    assert args.id_col == ["ID", "EventDate"]
    assert build_parser().parse_args(["--id-col", "UPA"]).id_col == ["UPA"]


def test_osha_repeated_ids_are_reported_or_kept_apart_by_a_composite_key(
        tmp_path: Path, osha: pd.DataFrame, tiny_bundle: Path, ray_local, caplog: pytest.LogCaptureFixture) -> None:
    pairs = osha.index[osha["ID"].isin(OSHA_REPEATED_IDS)]
    rows = osha.loc[sorted(set(pairs) | set(range(30)))][COLS].reset_index(drop=True)  # 35 incidents
    _write(tmp_path / "input", rows)
    with caplog.at_level("WARNING", logger="soi_batch.nightly"):
        by_id = run_nightly(_config(tmp_path, tiny_bundle, id_col="ID"))
    assert by_id.counts.duplicate_ids_dropped == 5 and by_id.counts.duplicate_ids == OSHA_REPEATED_IDS
    assert by_id.counts.classified == 30
    warning = next(r.getMessage() for r in caplog.records if "dropped" in r.getMessage())
    assert "5 row(s) dropped" in warning and OSHA_REPEATED_IDS[0] in warning and "--id-col EventDate" in warning

    composite = _config(tmp_path, tiny_bundle, id_col=["ID", "EventDate"]).model_copy(
        update={"output": str(tmp_path / "out_composite")})
    m = run_nightly(composite)
    assert (m.counts.duplicate_ids_dropped, m.counts.duplicate_ids, m.counts.classified) == (0, [], 35)
    out = DeltaTable(str(tmp_path / "out_composite")).to_pyarrow_dataset().to_table(
        columns=["soi_key", "ID", "EventDate", "row_key"]).to_pandas()
    assert len(out) == 35 and out["soi_key"].is_unique and set(out["row_key"]) == set(rows["row_key"])
    assert (out["soi_key"] == out["ID"] + "\x1f" + out["EventDate"]).all()
    assert run_nightly(composite).counts.skipped == 35  # the generated key matches on the next run


@pytest.mark.slow
def test_a_run_ends_the_ray_session_it_started(tmp_path: Path, osha: pd.DataFrame, tiny_bundle: Path) -> None:
    """A fresh process without Ray: the run stops its own Ray before returning, so nothing of Ray's
    (its log and error listener threads in C++ calls) is left to the interpreter's exit.  Its local
    Ray has 1 CPU (``ray_num_cpus=1``; before: the actor reserved it and the reads waited forever)."""
    _write(tmp_path / "input", _rows(osha, 0, 40))
    script = f"""
import threading, ray
from soi_batch.nightly import NightlyConfig, run_nightly
m = run_nightly(NightlyConfig(input={str(tmp_path / 'input')!r}, output={str(tmp_path / 'out')!r},
                              model={str(tiny_bundle)!r}, chunk_rows=20, ray={{"batch_size": 20}}, ray_num_cpus=1))
print("STATUS", m.status, m.counts.classified)
print("RAY", ray.is_initialized())
print("THREADS", sorted(t.name for t in threading.enumerate() if t.name.startswith(("ray", "Python"))))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("STATUS", "RAY", "THREADS"))]
    assert lines == ["STATUS completed 40", "RAY False", "THREADS []"], done.stdout[-2000:]


def test_input_columns_named_like_results_are_refused_before_any_work(tmp_path: Path, osha: pd.DataFrame,
                                                                      tiny_bundle: Path) -> None:
    rows = _rows(osha, 0, 20)
    rows["Confidence"] = "high"  # Delta names are case-insensitive: it would clash with `confidence`
    _write(tmp_path / "input", rows)
    with pytest.raises(InputSchemaError, match=r"'Confidence'.*'confidence'"):
        run_nightly(_config(tmp_path, tiny_bundle))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_narrative_that_is_not_utf8_is_a_row_error_in_the_nightly_job(tmp_path: Path, osha: pd.DataFrame,
                                                                        tiny_bundle: Path, ray_local) -> None:
    rows = _rows(osha, 0, 40)
    values = [text.encode("utf-8") for text in rows["Final Narrative"]]
    values[5] = b"Employee cut \xff\xfe hand on a box cutter"
    table = pa.Table.from_pandas(rows.drop(columns=["Final Narrative"]), preserve_index=False)
    table = table.append_column("Final Narrative", pa.array(values, pa.binary()).view(pa.string()))
    (tmp_path / "input").mkdir()
    pq.write_table(table, tmp_path / "input" / "part-0.parquet")  # Parquet does not check string encodings
    manifest = run_nightly(_config(tmp_path, tiny_bundle))
    out = _output(tmp_path / "out").set_index("row_key")
    assert manifest.status == "completed" and len(out) == 40 and manifest.counts.errors == 1
    bad = out.loc[rows["row_key"][5]]
    assert bad["error"] == INVALID_UTF8_ERROR and bad["source_code"] is None
    assert out.drop(index=rows["row_key"][5])["source_code"].notna().all()
