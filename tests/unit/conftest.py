"""Fixtures of the unit tests."""
from __future__ import annotations

import pytest

from tests.conftest import tiny_spec


@pytest.fixture
def base(tmp_path, small_sst2):
    """(folder, spec dict) of a small valid classification job on real SST-2 rows and a tiny BERT."""
    train, dev = small_sst2
    return tmp_path, tiny_spec(tmp_path / "run", train, dev)
