"""A Parquet file written as one large row group does not reach an actor as one block.

Ray reads a row group as one block and hands an actor whole blocks, so the actor's memory grew with
the file (1.15 GB at 5k rows, 2.10 GB at 50k).  Measured here as Ray's block sizes, through a real
local Ray and the tiny bundle: every block the actors return holds at most one map batch of rows.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from soi_batch.ray_data import RayOptions, classify_dataset, read_dataset
from soi_batch.tables import inspect_input


def _block_rows(ds) -> list[int]:
    return [meta.num_rows for bundle in ds.iter_internal_ref_bundles() for meta in bundle.metadata]


def test_one_row_group_is_split_before_the_actors(osha, tiny_bundle, ray_local, tmp_path):
    rows = osha.iloc[:1200][["ID", "Final Narrative"]].astype({"ID": str})
    src = tmp_path / "one_group.parquet"
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), src, row_group_size=len(rows))
    assert pq.ParquetFile(src).metadata.num_row_groups == 1
    read = read_dataset(inspect_input(src)).materialize()
    assert _block_rows(read) == [1200]  # what Ray makes of the file: one block

    out = classify_dataset(read_dataset(inspect_input(src)), text_col="Final Narrative", model=tiny_bundle,
                           run_id="r", options=RayOptions(batch_size=200)).materialize()
    blocks = _block_rows(out)
    assert sum(blocks) == 1200 and max(blocks) <= 200 and len(blocks) >= 6
