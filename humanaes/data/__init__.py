"""Reading, checking, splitting and importing data in the HumanBeauty layout (reference section 6).

`labels` reads and writes label files (`Sample`, `load_jsonl`, `load_split`, `load_samples`),
`validate`, `split`, `stats` and `importer` back the `humanaes data ...` commands. Every public
name is re-exported here, so `from humanaes.data import X` works for all of them.
"""

from __future__ import annotations

from humanaes.data.importer import import_table
from humanaes.data.labels import (
    EXPERT_SUBSET,
    OVERALL_SUBSET,
    SPLIT_SUFFIX,
    SUBSET_LABEL,
    Sample,
    default_image_root,
    load_jsonl,
    load_samples,
    load_split,
    split_files,
    subset_label_files,
)
from humanaes.data.split import split_dataset
from humanaes.data.stats import HISTOGRAM_BINS, dataset_stats, format_stats
from humanaes.data.validate import Finding, ValidationReport, validate_dataset
from humanaes.schema import DIMENSIONS, LEVELS, score_to_level

__all__ = [
    "DIMENSIONS",
    "EXPERT_SUBSET",
    "HISTOGRAM_BINS",
    "LEVELS",
    "OVERALL_SUBSET",
    "SPLIT_SUFFIX",
    "SUBSET_LABEL",
    "Finding",
    "Sample",
    "ValidationReport",
    "dataset_stats",
    "default_image_root",
    "format_stats",
    "import_table",
    "load_jsonl",
    "load_samples",
    "load_split",
    "score_to_level",
    "split_dataset",
    "split_files",
    "subset_label_files",
    "validate_dataset",
]
