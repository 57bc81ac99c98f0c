"""Old module paths of humanaes, kept importable after the layout of `humanaes/models/`,
`humanaes/training/` and `humanaes/evaluation/` (issue 12).

`import humanaes.scoring` (or `from humanaes.bundled.scorer import BundledScorer`) gives the
module at its new home itself, not a copy, so monkeypatching and isinstance checks behave as
before and pickles that name the old path still load. One table instead of a shim file per
old module keeps the top level of the package readable.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

#: old module -> its new home
MOVED_MODULES: dict[str, str] = {
    "humanaes.api": "humanaes.scorer",
    "humanaes.registry": "humanaes.models.registry",
    "humanaes.heads": "humanaes.models.heads",
    "humanaes.config": "humanaes.models.expert.config",
    "humanaes.modeling": "humanaes.models.expert.modeling",
    "humanaes.convert": "humanaes.models.expert.convert",
    "humanaes.checkpoint": "humanaes.models.expert.checkpoint",
    "humanaes.tokenization": "humanaes.models.expert.tokenization",
    "humanaes.prompts": "humanaes.models.expert.prompts",
    "humanaes.scoring": "humanaes.models.expert.scorer",
    "humanaes.preprocessing": "humanaes.models.expert.processing",
    "humanaes.presets": "humanaes.models.expert.presets",
    "humanaes.bundled": "humanaes.models.mini",
    "humanaes.bundled.model": "humanaes.models.mini.modeling",
    "humanaes.bundled.face": "humanaes.models.mini.face",
    "humanaes.bundled.facenet": "humanaes.models.mini.facenet",
    "humanaes.bundled.scorer": "humanaes.models.mini.scorer",
    "humanaes.trainer": "humanaes.training.trainer",
    "humanaes.finetune": "humanaes.training.finetune",
    "humanaes.metavoter": "humanaes.training.metavoter",
    "humanaes.synthetic": "humanaes.training.synthetic",
    "humanaes.metrics": "humanaes.evaluation.metrics",
    "humanaes.plots": "humanaes.evaluation.plots",
    "humanaes.report": "humanaes.io.report",
    "humanaes.swift": "humanaes.data.swift",
    "humanaes.databuild": "humanaes.data.build",
    "humanaes.databuild.build": "humanaes.data.build.build",
    "humanaes.databuild.dedup": "humanaes.data.build.dedup",
    "humanaes.databuild.probe": "humanaes.data.build.probe",
    "humanaes.databuild.report": "humanaes.data.build.report",
    "humanaes.databuild.sources": "humanaes.data.build.sources",
    "humanaes.databuild.spec": "humanaes.data.build.spec",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        # The import system stores what this returns under the old name too.
        module = importlib.import_module(self.target)
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Nothing to run (the module ran when it was imported at its new home), but the import
        # system has just set the alias spec on it: give it back its own, which package
        # resources (the bundled weights, the presets) are read through.
        module.__spec__ = self.real_spec


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        is_package = hasattr(importlib.import_module(new), "__path__")
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new), is_package=is_package)


def install() -> None:
    """Make the old paths importable (idempotent; called by `import humanaes`)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
