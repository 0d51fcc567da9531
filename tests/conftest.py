"""Shared fixtures: every test starts with fresh layer names and a fixed weight seed."""

from __future__ import annotations

import numpy as np
import pytest

import kcompile as kc


@pytest.fixture(autouse=True)
def _fresh_session() -> None:
    kc.clear_session()
    kc.set_random_seed(1234)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)
