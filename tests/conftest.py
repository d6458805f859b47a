"""Central test configuration.

* ``@pytest.mark.gpu`` tests are skipped here, in one place, when torch sees no CUDA
  device.
* Every test starts with fresh backend caches (tests flip ENGINE_* variables).
"""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_backends():
    from engine import _backends

    _backends.reset()
    yield
    _backends.reset()
