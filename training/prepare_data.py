"""Labelled reports → Axolotl alpaca JSONL (train / validation / test) + data fingerprint.

Each row becomes ``{"instruction", "input", "output"}`` with the instruction of
:class:`soi_batch.prompt.PromptTemplate`, the narrative normalised exactly as inference does
(:func:`soi_batch.prompt.normalize_narrative`), and the OIICS code's digits as the output.
Axolotl's ``alpaca`` type renders ``system + turn.format(instruction, input)`` (the same text as
``PromptTemplate().render(narrative)``) and appends the tokenizer's EOS after the output, so the
model learns ``### Response:\\n8621</s>`` — the path the inference scorer walks.

The split is the project's one time-based split (:mod:`soi_batch.datasets.osha`), de-duplicated across
parts, so a model trained here is tested on the same rows as soi-mini and the baselines.

    python -m training.prepare_data [INPUT] --out DIR [--text-col ...] [--label-col ...]
                                    [--date-col ...] [--input-format csv|parquet|delta]
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from soi_batch.commands.options import add_input_options, add_logging_options, configure_logging
from soi_batch.datasets.osha import (
    DATE_COL,
    LABEL_COL,
    OSHA_SIR,
    TEXT_COL,
    SplitSpec,
    fingerprint,
    read_osha_sir,
    split_by_time,
)
from soi_batch.errors import InputSchemaError
from soi_batch.prompt import PromptTemplate, normalize_narrative
from soi_batch.tables import InputFormat, inspect_input, read_table
from soi_batch.taxonomy import load_taxonomy

log = logging.getLogger(__name__)
PARTS = ("train", "validation", "test")
FINGERPRINT_FILE = "fingerprint.json"


@dataclass(frozen=True)
class PrepareConfig:
    text_col: str = TEXT_COL
    label_col: str = LABEL_COL
    date_col: str = DATE_COL
    date_format: str | None = "%m/%d/%Y"
    """Format of string dates (None: let pandas infer)."""
    input_format: InputFormat | None = None
    """csv, parquet or delta; None: from the path (:func:`soi_batch.tables.detect_format`)."""
    csv_encoding: str = "utf-8"
    """Encoding of a CSV input other than the bundled OSHA file (which is read as cp1252)."""
    spec: SplitSpec = field(default_factory=SplitSpec)
    prompt: PromptTemplate = field(default_factory=PromptTemplate)


def read_frame(path: str | Path, cfg: PrepareConfig) -> pd.DataFrame:
    """The input table as a DataFrame with a ``row_key`` column (row number of the source).

    The format comes from :func:`soi_batch.tables.detect_format` unless ``cfg.input_format`` is set;
    CSV columns are read as strings (``cfg.csv_encoding``), and the whole file is checked first.
    """
    path = Path(path)
    if path.resolve() == OSHA_SIR.resolve():
        return read_osha_sir(path)
    spec = inspect_input(path, fmt=cfg.input_format, encoding=cfg.csv_encoding)
    df = read_table(spec).to_pandas()
    if "row_key" not in df.columns:
        df.insert(0, "row_key", [f"row-{i:07d}" for i in range(len(df))])
    return df


def _check_columns(df: pd.DataFrame, cfg: PrepareConfig, source: Path) -> None:
    for option, col in (("--text-col", cfg.text_col), ("--label-col", cfg.label_col), ("--date-col", cfg.date_col)):
        if col not in df.columns:
            raise InputSchemaError(f"{source}: column {col!r} not found (set {option}); columns are {list(df.columns)}")


def to_alpaca(part: pd.DataFrame, cfg: PrepareConfig) -> list[dict[str, str]]:
    """Rows of one split part as alpaca records (the narrative normalised as at inference)."""
    prompt = cfg.prompt
    records = []
    for text, label in part[[cfg.text_col, cfg.label_col]].itertuples(index=False):
        narrative, _ = normalize_narrative(str(text), prompt.max_input_chars)
        records.append({"instruction": prompt.instruction, "input": narrative, "output": prompt.answer(str(label))})
    return records


def clean_labels(df: pd.DataFrame, cfg: PrepareConfig) -> pd.DataFrame:
    """Drop rows with no narrative or a label outside the OIICS label set (logged, counted)."""
    taxonomy = load_taxonomy()
    labels = df[cfg.label_col].astype("string").str.strip()
    texts = df[cfg.text_col].astype("string").fillna("")
    has_text = texts.map(lambda t: bool(normalize_narrative(t, 10)[0]))
    valid = labels.map(lambda c: c is not pd.NA and taxonomy.is_label(str(c))).astype(bool)
    if (~has_text).any() or (~valid).any():
        log.warning("dropping %d rows without narrative and %d rows whose label is not an OIICS code",
                    int((~has_text).sum()), int((has_text & ~valid).sum()))
    out = df[has_text & valid].copy()
    out[cfg.label_col] = labels[has_text & valid].astype(str)
    out[cfg.text_col] = texts[has_text & valid].astype(str)
    return out


def prepare(input_path: str | Path, out_dir: str | Path, cfg: PrepareConfig = PrepareConfig()) -> dict:
    """Write ``{train,validation,test}.jsonl`` and ``fingerprint.json`` into ``out_dir``."""
    input_path, out_dir = Path(input_path), Path(out_dir)
    df = read_frame(input_path, cfg)
    _check_columns(df, cfg, input_path)
    df = clean_labels(df, cfg)
    parts = split_by_time(df, cfg.spec, text_col=cfg.text_col, date_col=cfg.date_col, date_format=cfg.date_format)
    if parts["train"].empty:
        raise InputSchemaError(
            f"{input_path}: no rows dated before {cfg.spec.validation_start} in {cfg.date_col!r}; "
            "check --date-col and the date format"
        )
    fp = fingerprint(parts, cfg.spec, text_col=cfg.text_col, label_col=cfg.label_col)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in PARTS:
        records = to_alpaca(parts[name], cfg)
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
        counts[name] = len(records)
    info = {
        "data_fingerprint": fp,
        "input": str(input_path),
        "columns": {"text": cfg.text_col, "label": cfg.label_col, "date": cfg.date_col},
        "split": asdict(cfg.spec),
        "rows": counts,
        "prompt_version": cfg.prompt.version,
        "prompt_sha256": cfg.prompt.sha256,
        "format": "alpaca",
    }
    (out_dir / FINGERPRINT_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s: %s, fingerprint %s", out_dir, counts, fp[:12])
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", nargs="?", default=str(OSHA_SIR), help="labelled reports (default: bundled OSHA SIR)")
    ap.add_argument("--out", required=True, help="output directory for the JSONL files and fingerprint.json")
    add_input_options(ap, encoding=False)
    ap.add_argument("--label-col", default=LABEL_COL)
    ap.add_argument("--date-col", default=DATE_COL)
    ap.add_argument("--date-format", default="%m/%d/%Y", help="strptime format of string dates; 'infer' to guess")
    ap.add_argument("--csv-encoding", default="utf-8")
    add_logging_options(ap)
    args = ap.parse_args(argv)
    configure_logging(args.verbose)
    cfg = PrepareConfig(
        text_col=args.text_col, label_col=args.label_col, date_col=args.date_col,
        date_format=None if args.date_format == "infer" else args.date_format,
        input_format=args.input_format, csv_encoding=args.csv_encoding,
    )
    info = prepare(args.input, args.out, cfg)
    print(json.dumps({"rows": info["rows"], "data_fingerprint": info["data_fingerprint"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
