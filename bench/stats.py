"""Paired timing ratios and what they can tell apart.

Runners are timed in turns within a round, so a slow spell of the machine slows every runner of
that round alike; each round gives one ratio (peer time / kcompile time). The estimate is the
median of those ratios, and its confidence interval comes from order statistics: for n rounds,
[r_(k), r_(n+1-k)] holds the true median with probability 1 - 2 P(Binomial(n, 1/2) < k), whatever
the distribution of the ratios. A row is "faster" or "slower" only when the whole interval lies
on one side of 1; two programs that run the same kernels can only ever be "tied".
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from math import comb

# Seconds each runner waits before its turn. PyTorch's OpenMP workers keep spinning for a while
# after its work; without the pause they slow whichever runner comes next, a bias, since the turns'
# order is fixed (reversed every other round), not noise. With it, two runs of kcompile's graphs
# that differ by one small Transpose measure within 1% of each other (instead of 7% apart).
SETTLE = 0.02


@dataclass(frozen=True)
class MedianCI:
    median: float
    lo: float
    hi: float
    confidence: float  # the interval's exact coverage, >= the level asked for when n allows it

    def verdict(self) -> str:
        """kcompile's standing against a peer whose ratios (peer / kcompile) these are."""
        if self.lo > 1.0:
            return "faster"
        if self.hi < 1.0:
            return "slower"
        return "tied"

    def __str__(self) -> str:
        return f"{self.median:.2f}x [{self.lo:.2f}, {self.hi:.2f}]"


def paired_ratios(times: list[float], base: list[float]) -> list[float]:
    """Each round's time over the base runner's time in the same round."""
    return [t / b for t, b in zip(times, base, strict=True)]


def _below(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) < k)."""
    return sum(comb(n, i) for i in range(k)) / 2**n


def median_ci(values: list[float], level: float = 0.95) -> MedianCI:
    """The median of `values` and a distribution-free interval for the true median. With too few
    values for `level` (fewer than 6 at 95%), the interval is [min, max] and `confidence` says how
    much less it covers."""
    if not values:
        raise ValueError("median_ci needs at least one value")
    xs = sorted(values)
    n = len(xs)
    k = 1  # the widest interval, [min, max]
    while k + 1 <= (n + 1) // 2 and 1 - 2 * _below(n, k + 1) >= level:
        k += 1
    return MedianCI(statistics.median(xs), xs[k - 1], xs[n - k], 1 - 2 * _below(n, k))
