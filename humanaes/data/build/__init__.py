"""`humanaes data build`: a HumanBeauty-style data set from public data sets, described by a YAML spec.

See `humanaes.data.build.build` for the pipeline and docs/data-build.md for the spec and the filters.
"""

from humanaes.data.build.build import REASONS, BuildInterrupted, BuildResult, build_dataset
from humanaes.data.build.spec import BuildSpec, load_spec

__all__ = ["REASONS", "BuildInterrupted", "BuildResult", "BuildSpec", "build_dataset", "load_spec"]
