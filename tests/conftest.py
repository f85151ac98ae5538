"""Shared test settings: where the real Omniglot lies, and a cache folder that never touches ~."""

import os
from pathlib import Path

import pytest
import torch

# CI clones the repository beside a copy of shared/, as on a developer's machine.
REAL_OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
needs_real_omniglot = pytest.mark.skipif(not (REAL_OMNIGLOT / "images_background.zip").is_file(),
                                         reason=f"real Omniglot not found at {REAL_OMNIGLOT}")


@pytest.fixture(scope="session", autouse=True)
def data_cache(request, tmp_path_factory):
    """Decoded data sets go to pytest's cache (decoded once across runs), not the user's home."""
    pytest_cache = getattr(request.config, "cache", None)
    folder = pytest_cache.mkdir("mamlkit-xdg") if pytest_cache else tmp_path_factory.mktemp("xdg")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture
def float64():
    """Default dtype float64 for the test: gradient checks compare to 1e-10, beyond float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
