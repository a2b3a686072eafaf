"""Remote storage (#18.5) and output write options (#18.6): ``s3://`` inputs and outputs through a
real S3-compatible server (moto's server mode, started here on a free local port, reached over
HTTP by Arrow, Delta Lake and Ray exactly as they reach AWS), with storage options given
explicitly; Parquet and Delta outputs written in modes error / append / overwrite, partitioned.

Real OSHA rows (soi_batch/data/osha_sir_sample.csv); real local Ray where a test says so.  Each
case is listed in tests/README.md.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from soi_batch.checks import check_output
from soi_batch.cli import main
from soi_batch.errors import ConfigError, InputReadError
from soi_batch.storage import parse_storage_options
from soi_batch.tables import InputSnapshot, inspect_input, read_table, write_table

SAMPLE = Path(__file__).resolve().parents[1] / "soi_batch" / "data" / "osha_sir_sample.csv"
TEXT = "Final Narrative"
BUCKET = "reports"


@pytest.fixture(scope="module")
def s3() -> dict[str, str]:
    """A moto S3 server on a free local port with the bucket ``reports``; the storage options to reach it.

    The server runs in its own process: Delta Lake's calls hold the GIL while they wait for the
    server, so a server thread in this process could not answer them.
    """
    import boto3  # with moto[server], in the dev extra
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.2)
        options = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "soi-test-key-id",
                   "AWS_SECRET_ACCESS_KEY": "soi-test-secret", "AWS_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=options["AWS_ENDPOINT_URL"], aws_access_key_id="soi-test-key-id",
                              aws_secret_access_key="soi-test-secret", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="in/sample.csv", Body=SAMPLE.read_bytes())
        client.put_object(Bucket=BUCKET, Key="in/sample.parquet", Body=_parquet_bytes(_local_rows()))
        options["client"] = client  # type: ignore[assignment]
        yield options
    finally:
        server.terminate()
        server.wait(timeout=30)


def _opts(s3: dict) -> dict[str, str]:
    return {k: v for k, v in s3.items() if k != "client"}


def _local_rows(n: int | None = None) -> pa.Table:
    table = read_table(inspect_input(SAMPLE))
    return table if n is None else table.slice(0, n)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _keys(s3: dict, prefix: str) -> list[str]:
    listing = s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []) if not item["Key"].endswith("/"))  # no folder markers


# --- inputs on s3:// ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sample.csv", "sample.parquet"])
def test_csv_and_parquet_inputs_on_s3_are_inspected_and_read(s3, name):
    local = _local_rows()
    spec = inspect_input(f"s3://{BUCKET}/in/{name}", storage_options=_opts(s3))
    assert spec.path == f"s3://{BUCKET}/in/{name}"  # the URI as given, not s3:/reports/…
    assert spec.format == name.rsplit(".", 1)[1]
    assert spec.columns == local.column_names and spec.num_rows == local.num_rows == 1000
    if name.endswith(".csv"):
        assert spec.encoding == "cp1252"  # sniffed from the remote bytes, as for the local file
    assert read_table(spec).equals(local)
    snapshot = InputSnapshot.open(spec)
    assert pa.Table.from_batches(list(snapshot.batches([TEXT]))).column(TEXT).equals(local.column(TEXT))


def test_missing_bucket_key_or_endpoint_is_a_one_line_error_naming_the_uri(s3, capsys):
    options = _opts(s3)
    with pytest.raises(InputReadError) as missing_key:
        inspect_input(f"s3://{BUCKET}/in/missing.csv", storage_options=options)
    assert str(missing_key.value) == f"s3://{BUCKET}/in/missing.csv: no such file or directory"
    with pytest.raises(InputReadError) as missing_bucket:
        inspect_input("s3://no-such-bucket/reports.csv", storage_options=options)
    assert str(missing_bucket.value) == "s3://no-such-bucket/reports.csv: no such bucket or container 'no-such-bucket'"
    with pytest.raises(ConfigError, match=r"^cannot write the output s3://no-such-bucket/out: no such bucket"):
        check_output("s3://no-such-bucket/out", fmt="parquet", storage_options=options)
    with pytest.raises(InputReadError) as unreachable:  # nothing listens on port 9 (discard)
        inspect_input(f"s3://{BUCKET}/in/sample.csv",
                      storage_options={**options, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert str(unreachable.value).startswith(f"s3://{BUCKET}/in/sample.csv: cannot reach it: ")
    assert "\n" not in str(unreachable.value)
    # the CLI: the same line, before any model loads or Ray starts
    rc = main(["classify", f"s3://{BUCKET}/in/missing.csv", f"s3://{BUCKET}/out",
               *(f"--storage-option={k}={v}" for k, v in options.items())])
    err = capsys.readouterr().err
    assert rc != 0 and f"s3://{BUCKET}/in/missing.csv: no such file or directory" in err


def test_storage_option_flags_are_key_value_pairs():
    assert parse_storage_options(["AWS_REGION=eu-west-1", "AWS_ENDPOINT_URL=http://h:9000/?a=b"]) == {
        "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://h:9000/?a=b"}
    with pytest.raises(ConfigError, match="--storage-option 'AWS_REGION': expected KEY=VALUE"):
        parse_storage_options(["AWS_REGION"])


def test_s3_output_checks_keep_the_uri_and_refuse_an_existing_output(s3):
    options = _opts(s3)
    target = check_output(f"s3://{BUCKET}/checked/out", fmt="delta", storage_options=options)
    assert target.path == f"s3://{BUCKET}/checked/out" and not target.replace
    assert _keys(s3, "checked/") == []  # checking wrote nothing
    write_table(_local_rows(3), f"s3://{BUCKET}/checked/out", fmt="delta", storage_options=options)
    with pytest.raises(ConfigError, match=rf"^s3://{BUCKET}/checked/out exists; pass --overwrite"):
        check_output(f"s3://{BUCKET}/checked/out", fmt="delta", storage_options=options)
    with pytest.raises(ConfigError, match="is a Delta table; --mode append adds to an output of the same format"):
        check_output(f"s3://{BUCKET}/checked/out", fmt="parquet", mode="append", storage_options=options)
    with pytest.raises(ConfigError, match="overlaps the input"):
        check_output(f"s3://{BUCKET}/in", fmt="parquet", mode="overwrite", storage_options=options,
                     input_path=f"s3://{BUCKET}/in/sample.csv")
    assert check_output(f"s3://{BUCKET}/checked/out", fmt="delta", overwrite=True, storage_options=options).replace


# --- Ray: read from and write to s3:// -----------------------------------------------------------
def test_ray_reads_s3_and_writes_parquet_and_delta_to_s3_in_every_mode(s3, ray_local):
    import pyarrow.dataset as pads
    from deltalake import DeltaTable

    from soi_batch.ray_data import read_dataset, write_dataset

    options = _opts(s3)
    csv_ds = read_dataset(inspect_input(f"s3://{BUCKET}/in/sample.csv", storage_options=options))
    assert csv_ds.count() == 1000
    ds = read_dataset(inspect_input(f"s3://{BUCKET}/in/sample.parquet", storage_options=options)
                      ).select_columns(["ID", "State", TEXT]).limit(30)
    out = f"s3://{BUCKET}/ray/delta"
    write_dataset(ds, out, fmt="delta", mode="error", partition_by=["State"], storage_options=options)
    table = DeltaTable(out, storage_options={**options, "AWS_ALLOW_HTTP": "true"})
    assert table.metadata().partition_columns == ["State"] and table.to_pyarrow_table().num_rows == 30
    with pytest.raises(ConfigError, match=f"{out} exists; pass mode='append' or mode='overwrite'"):
        write_dataset(ds, out, fmt="delta", mode="error", storage_options=options)
    write_dataset(ds, out, fmt="delta", mode="append", partition_by=["State"], storage_options=options)
    write_dataset(ds.limit(5), out, fmt="delta", mode="overwrite", partition_by=["State"], storage_options=options)
    table = DeltaTable(out, storage_options={**options, "AWS_ALLOW_HTTP": "true"})
    assert table.version() == 2 and table.to_pyarrow_table().num_rows == 5
    assert DeltaTable(out, version=1, storage_options={**options, "AWS_ALLOW_HTTP": "true"}
                      ).to_pyarrow_table().num_rows == 60  # history kept

    pq_out = f"s3://{BUCKET}/ray/parquet"
    write_dataset(ds, pq_out, fmt="parquet", mode="error", partition_by=["State"], storage_options=options)
    keys = _keys(s3, "ray/parquet/")
    assert keys and all(k.startswith("ray/parquet/State=") and k.endswith(".parquet") for k in keys)
    write_dataset(ds.limit(7), pq_out, fmt="parquet", mode="overwrite", storage_options=options)
    from soi_batch.storage import arrow_filesystem

    fs, where = arrow_filesystem(pq_out, options)
    assert pads.dataset(where, format="parquet", filesystem=fs).count_rows() == 7
    assert not any(k.startswith("ray/parquet/State=") for k in _keys(s3, "ray/parquet/"))


def test_local_parquet_output_modes_and_partitioning(tmp_path, ray_local):
    import pyarrow.dataset as pads
    import ray.data

    from soi_batch.ray_data import write_dataset

    ds = ray.data.from_arrow(_local_rows(20).select(["ID", "State", TEXT]))
    out = tmp_path / "results"
    write_dataset(ds, out, fmt="parquet", mode="error", partition_by=["State"])
    folders = [p.name for p in out.iterdir()]
    assert all(name.startswith("State=") for name in folders)
    assert len(folders) == len(set(_local_rows(20)["State"].to_pylist())) > 1
    with pytest.raises(ConfigError, match="exists; pass mode='append'"):
        write_dataset(ds, out, fmt="parquet", mode="error")
    write_dataset(ds, out, fmt="parquet", mode="append", partition_by=["State"])
    assert pads.dataset(str(out), format="parquet", partitioning="hive").count_rows() == 40
    with pytest.raises(ConfigError, match="write mode 'replace' is not one of"):
        write_dataset(ds, out, fmt="parquet", mode="replace")  # type: ignore[arg-type]


def test_cli_write_options_are_checked_before_any_work(tmp_path, capsys):
    rc = main(["classify", str(SAMPLE), str(tmp_path / "out"), "--overwrite", "--mode", "append"])
    assert rc != 0 and "--overwrite and --mode append disagree" in capsys.readouterr().err
    rc = main(["classify", str(SAMPLE), str(tmp_path / "out"), "--partition-by", "Nope"])
    assert rc != 0 and "--partition-by column 'Nope' not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- the CLI end to end on s3:// -----------------------------------------------------------------
@pytest.mark.slow
def test_cli_classifies_s3_csv_into_a_partitioned_s3_delta_table(s3, tiny_bundle, ray_local, capsys):
    from deltalake import DeltaTable

    options = _opts(s3)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(_local_rows(40), sink)
    s3["client"].put_object(Bucket=BUCKET, Key="cli/reports.csv", Body=sink.getvalue().to_pybytes())
    flags = [f"--storage-option={k}={v}" for k, v in options.items()]
    model = ["--model", str(tiny_bundle), "--batch-size", "16"]
    out = f"s3://{BUCKET}/cli/results_delta"
    args = ["classify", f"s3://{BUCKET}/cli/reports.csv", out, "--output-format", "delta", "--partition-by",
            "Hospitalized", "--id-col", "ID", *flags, *model]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "classified 40 rows" in printed and f"→ {out}" in printed
    assert main([*args, "--mode", "append"]) == 0
    table = DeltaTable(out, storage_options={**options, "AWS_ALLOW_HTTP": "true"})
    assert table.version() == 1 and table.metadata().partition_columns == ["Hospitalized"]
    rows = table.to_pyarrow_table()
    assert rows.num_rows == 80 and sorted(set(rows["ID"].to_pylist())) == sorted(_local_rows(40)["ID"].to_pylist())
    assert rows["error"].null_count == 80 and rows["source_code"].null_count == 0


@pytest.mark.slow
def test_nightly_reads_s3_csv_and_merges_into_an_s3_delta_table(s3, tiny_bundle, ray_local, tmp_path):
    from deltalake import DeltaTable

    from soi_batch.nightly import NightlyConfig, run_nightly

    options = _opts(s3)
    rows = _local_rows(40)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(rows, sink)
    s3["client"].put_object(Bucket=BUCKET, Key="nightly/reports.csv", Body=sink.getvalue().to_pybytes())
    with pytest.raises(ConfigError, match="manifest_dir / staging_dir must be folders"):
        NightlyConfig(input=f"s3://{BUCKET}/nightly/reports.csv", output=f"s3://{BUCKET}/nightly/out")
    config = NightlyConfig(input=f"s3://{BUCKET}/nightly/reports.csv", output=f"s3://{BUCKET}/nightly/out",
                           manifest_dir=str(tmp_path / "manifests"), storage_options=options, id_col="ID",
                           model=str(tiny_bundle), chunk_rows=100, ray={"batch_size": 100})
    manifest = run_nightly(config)
    unique = len(set(rows["ID"].to_pylist()))
    assert manifest.status == "completed" and manifest.counts.classified == unique
    table = DeltaTable(config.output, storage_options={**options, "AWS_ALLOW_HTTP": "true"})
    assert sorted(table.to_pyarrow_table()["ID"].to_pylist()) == sorted(set(rows["ID"].to_pylist()))
    again = run_nightly(config)  # nothing new: the state is read back from S3
    assert again.status == "completed" and again.counts.classified == 0
    written = [p.read_text() for p in (tmp_path / "manifests").rglob("*.json")]
    assert written and not any("soi-test-secret" in text or "soi-test-key-id" in text for text in written)
    assert '"AWS_REGION": "us-east-1"' in written[0]  # the settings that are not secrets are recorded


def test_file_uris_are_local_paths(tmp_path):
    spec = inspect_input(SAMPLE.as_uri())
    assert spec.path == str(SAMPLE) and spec.format == "csv" and spec.num_rows == 1000
    target = check_output((tmp_path / "out").as_uri(), fmt="delta")
    assert target.path == str(tmp_path / "out") and not target.remote
    write_table(_local_rows(3), (tmp_path / "out").as_uri(), fmt="delta")
    assert read_table(inspect_input((tmp_path / "out").as_uri())).num_rows == 3
