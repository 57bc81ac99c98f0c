"""`humanaes data build`: a HumanBeauty-style data set from public data sets, described by a YAML spec.

See `humanaes.databuild.build` for the pipeline and docs/data-build.md for the spec and the filters.
"""

from humanaes.databuild.build import REASONS, BuildInterrupted, BuildResult, build_dataset
from humanaes.databuild.spec import BuildSpec, load_spec

__all__ = ["REASONS", "BuildInterrupted", "BuildResult", "BuildSpec", "build_dataset", "load_spec"]
