"""`humanaes data split`: reproducible per-source train/test label files."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from humanaes.data.labels import (
    SPLIT_SUFFIX,
    SUBSET_LABEL,
    _read_subset_rows,
    subset_label_files,
)
from humanaes.errors import DataError
from humanaes.fsutil import OutputLock
from humanaes.io.jsonl import write_json_lines


def _group_seed(seed: int, *parts: str) -> int:
    # A stable per-group seed: adding a source or subset never reshuffles the others.
    digest = hashlib.sha256("\0".join([str(seed), *parts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def rows_in_test(n_rows: int, test_ratio: float) -> int:
    """How many of a (subset, source) group's `n_rows` rows go to test: round(n_rows * test_ratio).

    Shared with `humanaes data build`, which checks before writing anything that the split it is
    about to ask for leaves rows on both sides.
    """
    return int(round(n_rows * test_ratio))


def split_dataset(
    root: str | os.PathLike, *, test_ratio: float = 0.1, seed: int = 0, force: bool = False
) -> dict[str, Any]:
    """Write ROOT/train_label.jsonl and ROOT/test_label.jsonl from the subsets' label.jsonl.

    Each (subset, source) group is split on its own (the official 90/10 per source), shuffled with
    a seed derived from `seed` and the group's name, after sorting by image name, so the split is
    reproducible whatever the row order and unaffected by other groups. A group of n rows gets
    round(n * test_ratio) test rows. Rows keep their keys; image_name gains `<subset>/images/` and
    `is_expert` is set. Overall-only rows keep their single float score (the loader also accepts
    the official [0]*11+[overall] padding). Other split files (e.g. val) are left untouched.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data set folder {root} does not exist")
    if not (0.0 < test_ratio < 1.0):
        raise DataError(f"--test-ratio must be between 0 and 1 (exclusive), got {test_ratio}")
    outputs = {name: root / f"{name}{SPLIT_SUFFIX}" for name in ("train", "test")}
    existing = [str(p) for p in outputs.values() if p.exists()]
    if existing and not force:
        raise DataError(f"{' and '.join(existing)} already exist; pass --force to overwrite")
    subsets = subset_label_files(root)
    if not subsets:
        raise DataError(
            f"{root} has no <subset>/{SUBSET_LABEL} files to split; "
            "`humanaes data import` writes them"
        )

    groups: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    order = 0
    for subset, label_file in subsets.items():
        for obj, fields in _read_subset_rows(label_file):
            out = {"image_name": f"{subset}/images/{fields['image_name']}"}
            out.update({k: v for k, v in obj.items() if k not in ("image_name", "is_expert")})
            out["is_expert"] = fields["is_expert"]
            groups[(subset, fields["source"])].append((order, out))
            order += 1

    chosen: dict[str, list[tuple[int, dict[str, Any]]]] = {"train": [], "test": []}
    counts: dict[str, dict[str, int]] = {}
    for (subset, source), rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: r[1]["image_name"])
        rng = np.random.default_rng(_group_seed(seed, subset, source))
        perm = rng.permutation(len(rows))
        n_test = rows_in_test(len(rows), test_ratio)
        test_idx = set(perm[:n_test].tolist())
        for i, row in enumerate(rows):
            chosen["test" if i in test_idx else "train"].append(row)
        counts[f"{subset}/{source}"] = {"train": len(rows) - n_test, "test": n_test}

    empty = [name for name, rows in chosen.items() if not rows]
    if empty:
        # An empty label file labels nothing and `data validate` flags it: refuse to write one.
        total = sum(len(rows) for rows in chosen.values())
        raise DataError(
            f"--test-ratio {test_ratio} puts no rows in {' and '.join(empty)} ({total} rows in groups of "
            f"{', '.join(str(sum(c.values())) for c in counts.values())} per subset/source); "
            "choose a ratio that leaves at least one row on each side"
        )
    # The same lock as `data import --out`: an import swaps the whole root, so a split written
    # into the old root meanwhile would be lost.
    with OutputLock(Path(os.path.realpath(root)), what="data set"):
        for name, rows in chosen.items():
            # Keep the subsets' file order inside each split: easier to diff and read.
            write_json_lines(outputs[name], (row for _, row in sorted(rows, key=lambda r: r[0])))
    return {
        "files": {name: str(p) for name, p in outputs.items()},
        "train": len(chosen["train"]),
        "test": len(chosen["test"]),
        "groups": counts,
        "seed": seed,
        "test_ratio": test_ratio,
    }

