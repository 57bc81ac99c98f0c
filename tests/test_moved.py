"""Old module paths keep working after the layout change of issue 12 (humanaes/_moved.py).

Each old path must give the very module at its new home (not a copy: monkeypatching and
isinstance checks behave as before), package resources must still be read through it, and
the names users imported from the old modules must still be there.
"""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import humanaes
from humanaes._moved import MOVED_MODULES


@pytest.mark.parametrize("old, new", sorted(MOVED_MODULES.items()))
def test_old_path_is_the_new_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    assert sys.modules[old] is sys.modules[new]
    # the module keeps its own identity (resources, pickling, tracebacks use the real one)
    assert sys.modules[old].__spec__.name == new


def test_no_old_file_is_left_behind():
    # a stale old module file would shadow nothing (the alias comes first) but would confuse readers
    root = Path(humanaes.__path__[0])
    for old in MOVED_MODULES:
        rel = Path(*old.split(".")[1:])
        assert not (root / rel.with_suffix(".py")).exists() and not (root / rel / "__init__.py").exists(), old


def test_names_users_imported_from_old_paths():
    from humanaes.api import BaseScorer
    from humanaes.bundled import BundledScorer, load_bundled  # noqa: F401
    from humanaes.config import HumanAesConfig  # noqa: F401
    from humanaes.modeling import HumanAesExpertModel  # noqa: F401
    from humanaes.preprocessing import TilePreprocessor, load_image, preprocess_image, source_name  # noqa: F401
    from humanaes.scoring import HumanAesScorer, positions_from_mask  # noqa: F401

    from humanaes.evaluation import EvalReport, evaluate  # noqa: F401

    assert BaseScorer is humanaes.BaseScorer


def test_package_resources_through_an_old_path():
    # the bundled weights and the presets are read with importlib.resources
    importlib.import_module("humanaes.bundled")
    assert resources.files("humanaes.bundled").joinpath("humanaes-mini.json").is_file()
    importlib.import_module("humanaes.presets")
    assert resources.files("humanaes.presets").joinpath("templates.json").is_file()


def test_pickle_naming_an_old_path_loads():
    from humanaes.models.expert.processing import TilingConfig

    blob = pickle.dumps(TilingConfig(max_tiles=6), protocol=0).replace(b"humanaes.models.expert.processing", b"humanaes.preprocessing")
    assert b"humanaes.preprocessing" in blob
    assert pickle.loads(blob) == TilingConfig(max_tiles=6)


def test_old_path_in_a_fresh_interpreter():
    # the alias table is installed by `import humanaes` itself, whatever is imported first
    code = "import humanaes.scoring as s, humanaes.models.expert.scorer as n; assert s is n; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
