"""The OIICS v2.01 source-of-injury hierarchy, shipped with the package.

Codes are strings: ``"6"`` is a division, ``"66"`` a major group, ``"662"`` a group,
``"6624"`` a detail code.  ``"9999"`` (Nonclassifiable) stands alone under major group
``"99"``.  A code's ancestors are its prefixes, so the hierarchy is a trie over digits.

A model answers with a code's digits followed by end-of-sequence: the label alphabet is
:data:`LABEL_DIGITS` then EOS, and every row of label-token scores holds them in that order
(slot ``d`` is digit ``d``, slot :data:`EOS_SLOT` is EOS).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from soi_batch.errors import LabelSetError

Level = Literal["division", "major_group", "group", "detail"]
LEVELS: tuple[Level, ...] = ("division", "major_group", "group", "detail")
TAXONOMY_VERSION = "OIICS v2.01 source"
_DATA_FILE = "oiics_201_source_codes.csv"

LABEL_DIGITS = "0123456789"
"""The characters of every code, in slot order: digit ``d`` is label slot ``d``."""
EOS_SLOT = len(LABEL_DIGITS)
"""The label slot of end-of-sequence, which ends every label."""
N_LABEL_TOKENS = EOS_SLOT + 1
"""The label alphabet's size: ten digits, then EOS."""


@dataclass(frozen=True)
class Taxonomy:
    """Every OIICS source code with its title and level.

    ``labels`` is the closed set a model may answer with: by default every code below the
    division level (OSHA codes source at 2, 3 or 4 digits; divisions are never a label).
    """

    titles: dict[str, str]
    levels: dict[str, Level]
    labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.labels:
            object.__setattr__(
                self, "labels", tuple(sorted(c for c, lv in self.levels.items() if lv != "division"))
            )
        unknown = [c for c in self.labels if c not in self.titles]
        if unknown:
            raise LabelSetError(
                f"label set has {len(unknown)} codes that are not OIICS v2.01 source codes, "
                f"e.g. {unknown[:5]}; rebuild the bundle's label set from soi_batch.taxonomy"
            )

    def is_label(self, code: str) -> bool:
        return code in self._label_set

    @property
    def _label_set(self) -> frozenset[str]:
        return _frozen(self.labels)

    def with_labels(self, labels: Iterable[str]) -> Taxonomy:
        return Taxonomy(titles=self.titles, levels=self.levels, labels=tuple(sorted(set(labels))))


@cache
def _frozen(labels: tuple[str, ...]) -> frozenset[str]:
    return frozenset(labels)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Read the OIICS source code list (``code,title,level,level_name,...`` CSV).

    Without ``path`` the copy shipped in ``soi_batch/data`` is used.
    """
    if path is None:
        return _packaged_taxonomy()
    with open(path, encoding="utf-8", newline="") as fh:
        return _parse(csv.DictReader(fh), source=str(path))


@cache
def _packaged_taxonomy() -> Taxonomy:
    ref = resources.files("soi_batch") / "data" / _DATA_FILE
    with ref.open(encoding="utf-8", newline="") as fh:
        return _parse(csv.DictReader(fh), source=str(ref))


def _parse(rows: Iterable[dict[str, str]], *, source: str) -> Taxonomy:
    titles: dict[str, str] = {}
    levels: dict[str, Level] = {}
    for row in rows:
        try:
            code, title, level_name = row["code"].strip(), row["title"].strip(), row["level_name"].strip()
        except KeyError as exc:
            raise LabelSetError(f"{source}: missing column {exc}; expected code,title,level_name") from exc
        if not code.isdigit() or level_name not in LEVELS:
            raise LabelSetError(f"{source}: bad row code={code!r} level_name={level_name!r}")
        titles[code] = title
        levels[code] = level_name  # type: ignore[assignment]
    if not titles:
        raise LabelSetError(f"{source}: no codes found")
    return Taxonomy(titles=titles, levels=levels)
