"""Paired bootstrap confidence intervals for candidate - baseline deltas."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Delta:
    """Candidate minus baseline on one metric, with a paired bootstrap interval."""

    metric: str
    category: str
    baseline: float
    candidate: float
    delta: float
    low: float
    high: float
    n: int
    higher_is_better: bool = True

    @property
    def regression(self) -> bool:
        """Worse, and the interval excludes zero."""
        return self.high < 0 if self.higher_is_better else self.low > 0

    @property
    def improvement(self) -> bool:
        return self.low > 0 if self.higher_is_better else self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "regression": self.regression, "improvement": self.improvement}


def paired_bootstrap(
    baseline: list[float],
    candidate: list[float],
    *,
    metric: str,
    category: str = "all",
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    higher_is_better: bool = True,
) -> Delta:
    """Resample example indices with replacement (the same indices for both models)."""
    import numpy as np

    if len(baseline) != len(candidate):
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(baseline)} and {len(candidate)}")
    b = np.asarray(baseline, dtype=float)
    c = np.asarray(candidate, dtype=float)
    n = len(b)
    if n == 0:
        return Delta(metric, category, 0.0, 0.0, 0.0, 0.0, 0.0, 0, higher_is_better)
    diffs = c - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    means = diffs[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Delta(metric, category, float(b.mean()), float(c.mean()), float(diffs.mean()), float(low), float(high), n, higher_is_better)
