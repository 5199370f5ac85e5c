"""Paired bootstrap confidence intervals for candidate - baseline deltas."""

from __future__ import annotations

from collections.abc import Sequence
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Delta:
        """The delta :meth:`to_dict` wrote (its derived keys ignored)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def weighted_mean(values: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """The one mean of a metric's per-example scores, everywhere a figure is shown (summary, deltas,
    report, model card): plain, or weighted (response loss: by each answer's token count, so it is the
    loss training reports, per token). 0.0 for no examples."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return 0.0
    if weights is None:
        return float(v.mean())
    w = np.asarray(weights, dtype=float)
    total = w.sum()
    return float((v * w).sum() / total) if total > 0 else 0.0


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
    weights: Sequence[float] | None = None,
) -> Delta:
    """Resample example indices with replacement (the same indices for both models).

    ``weights`` (one per example, the same for both models: the reference answer's token count for the
    response loss) make every mean, the resampled ones too, a weighted mean (a ratio estimator)."""
    import numpy as np

    if len(baseline) != len(candidate):
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(baseline)} and {len(candidate)}")
    if weights is not None and len(weights) != len(baseline):
        raise ValueError(f"{len(weights)} weights for {len(baseline)} examples")
    b = np.asarray(baseline, dtype=float)
    c = np.asarray(candidate, dtype=float)
    n = len(b)
    if n == 0:
        return Delta(metric, category, 0.0, 0.0, 0.0, 0.0, 0.0, 0, higher_is_better)
    diffs = c - b
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    sampled = w[idx]
    totals = sampled.sum(axis=1)
    means = (diffs[idx] * sampled).sum(axis=1) / np.where(totals > 0, totals, 1.0)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    base, cand = weighted_mean(b, weights), weighted_mean(c, weights)
    return Delta(metric, category, base, cand, cand - base, float(low), float(high), n, higher_is_better)
