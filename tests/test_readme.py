"""README.md's examples, run as written, so that an example and the API it uses cannot drift apart.

The ```bash and ```python blocks are read from README.md itself (markdown-it-py's parser, fenced
blocks at any depth, list items included); nothing is copied here. Every block is either run or
marked, on the line right before it, with ``<!-- example: not run (REASON) -->``:
``test_every_block_is_run_or_marked`` fails on a new block that is neither.

How a block runs, in a fresh temporary working directory that holds the inputs the README names
(built from the real OSHA rows of ``soi_batch/data/osha_sir_sample.csv``):

- ``severeinjury.csv``: the sample's first ``ROWS`` rows as OSHA writes them (cp1252, CRLF, quoted);
- ``reports_delta/``, ``reports_parquet/``: a Delta table and a Parquet folder of the same rows;
- bash: each command line (``\\`` continuations joined, ``#`` comments dropped, split with shlex)
  runs in-process: ``soi-batch ARGS`` through ``soi_batch.cli.main(ARGS)``, ``python jobs/nightly.py
  ARGS`` through that script's own ``main(ARGS)``; each must exit 0. Any other command fails the
  test (run it here, or mark the block);
- python: the block is executed with the names it uses but does not define taken from
  ``PYTHON_NAMES`` below (``arrow_table``, ``pandas_df``, ``texts``: real OSHA rows; ``spark``: a
  local SparkSession), after the textual replacements of ``PATH_MAP`` (``s3://`` URIs to local
  folders, and ``ray.init()`` to a no-op on the module's local Ray); nothing else is changed.

One local Ray (2 CPUs, tests/conftest.py's ``ray_local``) serves every block; the Spark block,
the trends block and the CLI block (two runs) are ``slow``.
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SAMPLE = ROOT / "soi_batch" / "data" / "osha_sir_sample.csv"
NOT_RUN = re.compile(r"^\s*<!--\s*example:\s*not run\s*\((?P<reason>[^)]+)\)\s*-->\s*$")
RUN_LANGS = {"bash", "python"}
SLOW_MARKERS = ("soi_batch.spark", "soi-batch trends", "--output-format delta")  # the slowest blocks

ROWS = 100  # of the sample's 1,000 real rows: enough for every example, fast on 2 cores

# Visible substitutions applied to Python blocks before they run: remote storage becomes a local
# folder of the working directory ({workdir}: absolute, as Ray's workers need), and ``ray.init()``
# joins the local Ray already started.
PATH_MAP: dict[str, str] = {
    's3://bucket/reports/': '{workdir}/reports_parquet/',
    's3://bucket/classified/': '{workdir}/classified_parquet/',
    'ray.init()': 'ray.init(ignore_reinit_error=True)',
}


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    code: str
    not_run_reason: str | None


def readme_blocks() -> list[Block]:
    """The fenced ```bash / ```python blocks of README.md, with the marker on the line before each."""
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    blocks = []
    for token in MarkdownIt("commonmark").parse(text):
        if token.type != "fence":
            continue
        lang = token.info.strip().split()[0] if token.info.strip() else ""
        if lang not in RUN_LANGS:
            continue
        start = token.map[0]
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        marker = NOT_RUN.match(before)
        blocks.append(Block(lang, start + 1, token.content, marker["reason"] if marker else None))
    return blocks


BLOCKS = readme_blocks()
RUNNABLE = [b for b in BLOCKS if b.not_run_reason is None]


def _param(block: Block):
    marks = [pytest.mark.slow] if any(m in block.code for m in SLOW_MARKERS) else []
    return pytest.param(block, id=f"{block.lang}-line{block.line}", marks=marks)


def test_every_block_is_run_or_marked() -> None:
    assert BLOCKS, "no ```bash or ```python block found in README.md"
    fences = [ln for ln in README.read_text(encoding="utf-8").splitlines() if ln.strip().startswith("```")]
    openings = [ln.strip()[3:].strip() for ln in fences[::2]]
    unknown = sorted({lang for lang in openings if lang and lang not in RUN_LANGS})
    assert not unknown, f"README.md has fenced blocks in {unknown}: run them here or mark them"
    assert len(BLOCKS) == sum(1 for lang in openings if lang in RUN_LANGS)
    # Each marked block says why, and what is run here covers every language.
    assert all(b.not_run_reason.strip() for b in BLOCKS if b.not_run_reason is not None)
    assert {b.lang for b in RUNNABLE} == RUN_LANGS


def test_marker_parser_sees_a_marker_only_right_before_a_block() -> None:
    assert NOT_RUN.match("  <!-- example: not run (needs a GPU) -->")["reason"] == "needs a GPU"
    assert NOT_RUN.match("<!-- example: run -->") is None


# -- the working directory the examples run in ----------------------------------------------------

@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The input files the README names, from real OSHA rows, built once for the module."""
    import pandas as pd
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    base = tmp_path_factory.mktemp("readme-inputs")
    frame = pd.read_csv(SAMPLE, encoding="cp1252", dtype=str, keep_default_na=False, nrows=ROWS)
    # As OSHA publishes it: cp1252, CRLF, every field quoted.
    frame.to_csv(base / "severeinjury.csv", index=False, encoding="cp1252", lineterminator="\r\n",
                 quoting=1)
    table = pacsv.read_csv(base / "severeinjury.csv", read_options=pacsv.ReadOptions(encoding="cp1252"),
                           convert_options=pacsv.ConvertOptions(
                               column_types={"ID": pa.string(), "UPA": pa.string()}))
    write_deltalake(str(base / "reports_delta"), table)
    (base / "reports_parquet").mkdir()
    pq.write_table(table, base / "reports_parquet" / "part-0.parquet")
    return base


@pytest.fixture
def workdir(inputs: Path, tmp_path: Path):
    for entry in inputs.iterdir():
        target = tmp_path / entry.name
        (shutil.copytree if entry.is_dir() else shutil.copy)(entry, target)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(cwd)


# -- running a block ------------------------------------------------------------------------------

def bash_commands(code: str) -> list[list[str]]:
    """The command lines of a bash block: continuations joined, comments and blank lines dropped."""
    joined = code.replace("\\\n", " ")
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def run_command(argv: list[str]) -> int:
    if argv[0] == "soi-batch":
        from soi_batch.cli import main

        return main(argv[1:])
    if argv[:2] == ["python", "jobs/nightly.py"]:
        script = runpy.run_path(str(ROOT / "jobs" / "nightly.py"))
        return script["main"](argv[2:])
    raise AssertionError(f"README command {argv[0]!r} is not run by this test: run it here or mark its block")


def python_names(code: str) -> dict:
    """The names README Python blocks use without defining them, as real objects."""
    import pandas as pd

    names: dict = {}
    if re.search(r"\b(arrow_table|pandas_df|texts)\b", code):
        frame = pd.read_csv(SAMPLE, encoding="cp1252", dtype=str, keep_default_na=False, nrows=20)
        names |= {"pandas_df": frame, "arrow_table": pa.Table.from_pandas(frame, preserve_index=False),
                  "texts": frame["Final Narrative"].head(3).tolist()}
    if re.search(r"\bspark\.", code):
        from pyspark.sql import SparkSession

        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        names["spark"] = (SparkSession.builder.master("local[2]").appName("soi-batch-readme")
                          .config("spark.ui.enabled", "false")
                          .config("spark.sql.shuffle.partitions", "2").getOrCreate())
        names["spark"].sparkContext.setLogLevel("ERROR")
    return names


@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE])
def test_readme_example_runs(block: Block, workdir: Path, ray_local) -> None:
    if block.lang == "bash":
        for argv in bash_commands(block.code):
            assert run_command(argv) == 0, f"README line {block.line}: {shlex.join(argv)} failed"
        return
    code = block.code
    for remote, local in PATH_MAP.items():
        code = code.replace(remote, local.format(workdir=workdir))
    namespace = python_names(code)
    exec(compile(code, f"README.md:{block.line}", "exec"), namespace)  # noqa: S102 - the README's own code
    for written in ("classified_parquet",):
        if written in code:
            assert any((workdir / written).rglob("*.parquet")), f"README line {block.line} wrote no {written}"
