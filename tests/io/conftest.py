"""Fixtures for the io tests: where the shared left-atrium data is, if anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from engine.io.dataset import LA_DIRNAME, default_data_dir


def find_la_dir() -> Optional[Path]:
    """The shared LA folder: ``default_data_dir()``, else ``/work/shared/data/...``."""
    found = default_data_dir()
    if found is not None:
        return found
    fixed = Path("/work/shared/data") / LA_DIRNAME
    return fixed if any(fixed.glob("la_*.npz")) else None


@pytest.fixture(scope="session")
def la_dir() -> Path:
    found = find_la_dir()
    if found is None:
        pytest.skip("shared left-atrium data not present")
    return found
