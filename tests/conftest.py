from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "internvl2"
DATA = SHARED / "data" / "HumanBeauty"


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # 2-core machines: keep each test process light and results reproducible.
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def bundled() -> Iterator[Any]:
    """The bundled humanaes-mini in float32, loaded once per module, run on one CPU thread."""
    from humanaes.models.mini import load_bundled

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_bundled(dtype="float32")
    torch.set_num_threads(threads)


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return require(FIXTURES)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require(DATA)
