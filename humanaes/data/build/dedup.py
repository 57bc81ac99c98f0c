"""Exact and near-duplicate groups: identical bytes (SHA-256) or perceptual hashes within a distance.

A resized, re-encoded or slightly recoloured copy of a photo keeps nearly the same 64-bit DCT
perceptual hash (`imagehash.phash`), so copies differ in a few bits while different photos differ
in about half of them. Grouping is transitive (A~B and B~C put A, B, C in one group), which errs on
the side of dropping: no two near-copies can end up one in train and one in test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Rows compared at once against all hashes (memory: CHUNK x n x 8 bytes).
CHUNK = 512


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(-1)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _union(parent: list[int], a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)  # the smaller index is the root: deterministic


def duplicate_groups(digests: Sequence[str], phashes: Sequence[str | None], max_distance: int | None) -> list[list[int]]:
    """Groups (lists of indices, ascending) of items with equal digests or, when `max_distance` is
    not None, perceptual hashes at most `max_distance` bits apart. Only groups of 2+ are returned."""
    n = len(digests)
    parent = list(range(n))
    first: dict[str, int] = {}
    for i, digest in enumerate(digests):
        if digest in first:
            _union(parent, first[digest], i)
        else:
            first[digest] = i
    if max_distance is not None:
        have = [i for i, h in enumerate(phashes) if h]
        if have:
            bits = np.array([int(phashes[i], 16) for i in have], dtype=np.uint64)  # type: ignore[arg-type]
            for start in range(0, len(have), CHUNK):
                block = bits[start : start + CHUNK]
                # only pairs (a, b) with b > a: the upper triangle
                dist = _popcount(block[:, None] ^ bits[None, start:])
                rows, cols = np.nonzero(dist <= max_distance)
                for r, c in zip(rows.tolist(), cols.tolist()):
                    if c > r:
                        _union(parent, have[start + r], have[start + c])
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(_find(parent, i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]
