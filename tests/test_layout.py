"""The house rules of the layout (README "Layout", CONTRIBUTING.md), checked on the source.

Imports only point down: `cli` -> `serve` / `distributed` / `training` / `evaluation` / `compat`
-> `models` -> `scorer` / `data` -> `io` -> the ground floor. Every `import` statement counts,
also those inside functions (a lazy import is still a dependency). A new arrow upwards fails
here with the module and the import named.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "humanaes"
#: the rooms of the package (a `from humanaes import X` of anything else imports the public API)
ROOMS_ON_DISK = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}

GROUND = {"schema", "errors", "fsutil", "options", "runtime", "hints", "config_keys", "safetensors_io", "signals",
          "_moved", "__version__"}
#: room -> the rooms it may import (besides itself and the ground floor)
ALLOWED: dict[str, set[str]] = {
    **{room: set() for room in GROUND},
    "io": {"modelinfo"},  # the HTML report names what a model's score means (plain facts of the registry)
    "scorer": {"io"},
    "data": {"io"},
    "modelinfo": {"models"},
    "models": {"io", "scorer", "modelinfo"},
    "data.build": {"io", "data", "models", "root"},  # the build pipeline filters with the bundled face detector
    "evaluation": {"io", "scorer", "data", "models"},
    "training": {"io", "scorer", "data", "models", "evaluation"},
    "compat": {"io", "scorer", "models"},
    "serve": {"io", "scorer", "models", "modelinfo", "root"},
    "distributed": {"io", "scorer", "models", "data", "serve", "root"},
    "cli": {"*"},
    "__main__": {"cli"},
    "root": {"*"},  # the package's __init__ re-exports the public API (lazily)
}
#: deliberate exceptions, each with its reason
EXCEPTIONS = {
    # the ms-swift bridge writes the expert family's own question/answer text
    ("humanaes.data.swift", "humanaes.models.expert.prompts"),
}


def _room(module: str) -> str:
    parts = module.split(".")
    if module == "humanaes":
        return "root"
    if parts[1] == "data" and len(parts) > 2 and parts[2] == "build":
        return "data.build"
    return parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "humanaes":  # a room (`from humanaes import io`) or the public API
                found += [(node.lineno, f"humanaes.{a.name}" if a.name in ROOMS_ON_DISK | {"__version__"} else "humanaes")
                          for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name == "humanaes" or name.startswith("humanaes.")]


def _module_name(path: Path) -> str:
    return ".".join(("humanaes", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        room = _room(module)
        allowed = ALLOWED[room]
        for line, target in _imports(path):
            target_room = _room(target)
            if target_room in (room, *GROUND) or "*" in allowed or target_room in allowed:
                continue
            if (module, target) in EXCEPTIONS:
                continue
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {room} imports {target} ({target_room})")
    return bad


def test_imports_point_down() -> None:
    assert _violations() == []


def test_every_room_is_known() -> None:
    rooms = {_room(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert rooms <= set(ALLOWED), rooms - set(ALLOWED)


def test_the_check_sees_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule has teeth: a scorer module that imports training code is reported, also when the
    import sits inside a function."""
    bad = tmp_path / "humanaes"
    (bad / "models" / "expert").mkdir(parents=True)
    (bad / "models" / "expert" / "oops.py").write_text("def f():\n    from humanaes.training import metavoter\n")
    (bad / "models" / "expert" / "fine.py").write_text("from humanaes.io.images import load_image\n")
    (bad / "io").mkdir()
    (bad / "io" / "late.py").write_text("import humanaes\nfrom humanaes import load\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", bad)
    assert _violations() == [
        "humanaes/io/late.py:1: io imports humanaes (root)",
        "humanaes/io/late.py:2: io imports humanaes (root)",
        "humanaes/models/expert/oops.py:2: models imports humanaes.training (training)",
    ]
