"""The MERGE key: one id column, or a key generated from several (``id_col: [ID, EventDate]``).

Checked before any work: an id column must be integers or strings (a composite key's columns may
also be dates, timestamps or booleans).  Float ids are refused: ``-0.0`` and ``0.0`` compare
equal and would MERGE two reports into one row, NaN ids are never equal to anything, and a
float written by a spreadsheet (``1.0000000000000002``) is not the id the user sees.

With several columns the key is a generated string column :data:`KEY_COL`: the columns' values
cast to strings and joined with ``\\x1f`` (ASCII unit separator), null when any of them is null.
It is stored in the output table next to the input's columns (which are kept as they are).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from soi_batch.errors import InputSchemaError

KEY_COL = "soi_key"
"""The generated key column of a composite id (several ``id_col`` columns)."""
SEPARATOR = "\x1f"


def _allowed(t: pa.DataType, *, composite: bool) -> bool:
    if pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        return True
    return composite and (pa.types.is_date(t) or pa.types.is_timestamp(t) or pa.types.is_boolean(t))


def key_column(schema: pa.Schema, id_cols: Sequence[str], *, where: str) -> str:
    """The column that is the MERGE key (``id_cols[0]``, or :data:`KEY_COL`); raises before any work
    if a column's type cannot be a key, naming the file, the column and the fix."""
    composite = len(id_cols) > 1
    if len(set(id_cols)) != len(id_cols):
        raise InputSchemaError(f"{where}: id_col lists a column twice: {list(id_cols)}")
    for name in id_cols:
        t = schema.field(name).type
        if pa.types.is_floating(t) or pa.types.is_decimal(t):
            raise InputSchemaError(
                f"{where}: id column {name!r} holds {t} numbers; float ids cannot be a MERGE key (-0.0 and 0.0 "
                "would merge into one report, NaN ids collapse, rounding changes ids). Write the id as an integer "
                f"or a string (pandas: df[{name!r}].astype('Int64') or .astype(str)), or choose other id columns "
                "(--id-col, several for a composite key)")
        if not _allowed(t, composite=composite):
            allowed = "integers, strings, dates, timestamps or booleans" if composite else "integers or strings"
            raise InputSchemaError(f"{where}: id column {name!r} holds {t}; an id column must hold {allowed}")
    if composite and KEY_COL in schema.names:
        raise InputSchemaError(f"{where}: the input already has a column {KEY_COL!r}, the name of the generated "
                               "composite key; rename it, or use it as the one id column (--id-col soi_key)")
    return KEY_COL if composite else id_cols[0]


def with_key(batch: pa.RecordBatch, id_cols: Sequence[str]) -> pa.RecordBatch:
    """``batch`` plus the generated :data:`KEY_COL` (only for a composite key; else ``batch`` as is)."""
    if len(id_cols) < 2:
        return batch
    parts = [pc.cast(batch.column(name), pa.string()) for name in id_cols]
    key = pc.binary_join_element_wise(*parts, SEPARATOR, null_handling="emit_null")
    return batch.append_column(pa.field(KEY_COL, pa.string()), key)
