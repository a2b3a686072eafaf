"""The time-based train / validation / test split of the OSHA Severe Injury Reports.

Every model of this project (soi-mini, the Axolotl recipe, the TF-IDF baseline) is trained,
tuned and tested on this one split:

* train       EventDate before 2016-07-01   (2015-01 .. 2016-06)
* validation  2016-07-01 .. 2016-08-31      (temperature, review threshold, model selection)
* test        2016-09-01 .. 2016-12-31      (reported only; never used while tuning)

Rows whose normalised narrative also appears in an earlier part are dropped from the later
part, so no test narrative was seen in training.  Row keys are the row numbers of the source
file (OSHA ``ID`` is not unique).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from soi_batch.prompt import normalize_narrative

OSHA_SIR = Path(__file__).parent / "data" / "severeinjury_2015-2016.csv.xz"
"""xz copy of the 19,947 OSHA SIR rows of 2015-2016 (cp1252, sha256 of the plain file below)."""
OSHA_SIR_SHA256 = "1e83c3ce09942332fa843d4eb5b8d15a809d417361d337ca1d6e73b8dcb8600e"
TEXT_COL = "Final Narrative"
LABEL_COL = "Source"
DATE_COL = "EventDate"


@dataclass(frozen=True)
class SplitSpec:
    validation_start: str = "2016-07-01"
    test_start: str = "2016-09-01"
    end: str = "2017-01-01"


def read_osha_sir(path: str | Path = OSHA_SIR) -> pd.DataFrame:
    """The OSHA SIR CSV as strings (codes keep their digits), with a ``row_key`` column."""
    df = pd.read_csv(path, encoding="cp1252", dtype=str, keep_default_na=False)
    df.insert(0, "row_key", [f"sir-{i:05d}" for i in range(len(df))])
    return df


def split_osha(df: pd.DataFrame, spec: SplitSpec = SplitSpec()) -> dict[str, pd.DataFrame]:
    """``{"train", "validation", "test"}`` frames, de-duplicated across parts by narrative."""
    return split_by_time(df, spec)


def split_by_time(
    df: pd.DataFrame,
    spec: SplitSpec = SplitSpec(),
    *,
    text_col: str = TEXT_COL,
    date_col: str = DATE_COL,
    date_format: str | None = "%m/%d/%Y",
) -> dict[str, pd.DataFrame]:
    """Split any table with a date column by ``spec``; de-duplicate narratives across parts.

    ``date_format`` parses string dates (None: let pandas infer); datetime columns are used as
    they are.  Rows whose date cannot be parsed, or lies outside ``[.., spec.end)``, are dropped.
    """
    dates = df[date_col]
    if not pd.api.types.is_datetime64_any_dtype(dates):
        dates = pd.to_datetime(dates, format=date_format, errors="coerce")
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_localize(None)
    parts = {
        "train": df[dates < spec.validation_start],
        "validation": df[(dates >= spec.validation_start) & (dates < spec.test_start)],
        "test": df[(dates >= spec.test_start) & (dates < spec.end)],
    }
    seen: set[str] = set()
    out: dict[str, pd.DataFrame] = {}
    for name, part in parts.items():
        keys = part[text_col].map(lambda t: normalize_narrative(t, 10**6)[0].lower())
        out[name] = part[~keys.isin(seen)].reset_index(drop=True)
        seen.update(keys)
    return out


def fingerprint(
    parts: dict[str, pd.DataFrame],
    spec: SplitSpec = SplitSpec(),
    *,
    text_col: str = TEXT_COL,
    label_col: str = LABEL_COL,
) -> str:
    """sha256 over the split spec and every (row key, narrative, label) of every part."""
    h = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    for name in sorted(parts):
        h.update(name.encode())
        for key, text, label in parts[name][["row_key", text_col, label_col]].itertuples(index=False):
            h.update(f"{key}\x1f{text}\x1f{label}\x1e".encode())
    return h.hexdigest()


def load_split(spec: SplitSpec = SplitSpec()) -> tuple[dict[str, pd.DataFrame], str]:
    """The bundled OSHA rows split by time, and the split's data fingerprint."""
    parts = split_osha(read_osha_sir(), spec)
    return parts, fingerprint(parts, spec)


if __name__ == "__main__":
    parts, fp = load_split()
    for name, part in parts.items():
        print(f"{name:>10}: {len(part):6d} rows")
    print(f"fingerprint: {fp}")
