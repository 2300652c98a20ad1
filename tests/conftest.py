"""Fixtures shared by every test file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The Hugging Face Hub does not answer from test machines: offline mode makes a hub attempt fail
# at once with a clear reason instead of waiting on network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_DATA_DIR = "/work/shared/data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local data mirror (``$PEFT_TUNE_DATA_DIR``, else /work/shared/data); skips if absent."""
    path = Path(os.environ.get("PEFT_TUNE_DATA_DIR", DEFAULT_DATA_DIR))
    if not path.is_dir():
        pytest.skip(f"no local data mirror at {path}")
    return path
