"""The benchmarks' confidence intervals: their coverage, checked by simulation."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("bench_stats", Path(__file__).parent.parent / "bench" / "stats.py")
assert _spec and _spec.loader
stats = importlib.util.module_from_spec(_spec)
sys.modules["bench_stats"] = stats  # dataclasses look their module up there
_spec.loader.exec_module(stats)


@pytest.mark.parametrize("n", [6, 9, 15, 40])
def test_median_interval_covers_the_true_median_as_often_as_it_claims(n: int) -> None:
    # Skewed ratios (log-normal, true median exactly 1.1), as timing ratios are.
    rng = np.random.default_rng(n)
    samples = 1.1 * np.exp(rng.normal(0.0, 0.05, size=(20000, n)))
    cis = [stats.median_ci(list(s)) for s in samples]
    claimed = cis[0].confidence
    assert all(ci.confidence == claimed for ci in cis)
    assert claimed >= 0.95
    covered = np.mean([ci.lo <= 1.1 <= ci.hi for ci in cis])
    # Within 4 standard errors of the claim: the interval is neither too narrow nor needlessly wide.
    assert abs(covered - claimed) < 4 * np.sqrt(claimed * (1 - claimed) / len(cis))
    assert all(ci.median == np.median(s) for ci, s in zip(cis[:50], samples, strict=False))


def test_too_few_rounds_give_the_whole_range_and_say_so() -> None:
    ci = stats.median_ci([1.3, 0.9, 1.0, 1.1, 1.2])
    assert (ci.lo, ci.hi) == (0.9, 1.3)
    assert ci.confidence == pytest.approx(1 - 2 / 32)


def test_verdicts_need_the_whole_interval_on_one_side() -> None:
    assert stats.median_ci([1.02, 1.03, 1.05, 1.04, 1.06, 1.08, 1.01, 1.07, 1.05]).verdict() == "faster"
    assert stats.median_ci([0.97, 0.98, 0.95, 0.96, 0.99, 0.94, 0.97, 0.98, 0.96]).verdict() == "slower"
    assert stats.median_ci([0.98, 1.01, 0.99, 1.02, 1.0, 0.97, 1.03, 0.99, 1.01]).verdict() == "tied"
    assert stats.paired_ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
