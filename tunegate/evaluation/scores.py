"""What a suite produces: one score per example (``Score``), gathered by metric into a ``ModelEvaluation``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tunegate.evaluation.stats import weighted_mean


@dataclass(frozen=True)
class Score:
    """One example's score. ``weight``: its share in every mean (the response loss: the reference answer's
    token count, so the mean is per token, as training reports it; 1 elsewhere)."""

    key: str
    category: str
    value: float
    weight: float = 1.0


@dataclass
class ModelEvaluation:
    scores: dict[str, list[Score]] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    truncated_prompts: int = 0  # distinct eval prompts longer than the model's context allows, cut from the left

    def mean(self, metric: str) -> float:
        """The metric's one figure: the (weighted) mean of its examples, as :func:`compare` computes it."""
        return _mean(self.scores.get(metric, []))

    def by_category(self, metric: str) -> dict[str, float]:
        groups: dict[str, list[Score]] = defaultdict(list)
        for s in self.scores.get(metric, []):
            groups[s.category].append(s)
        return {k: _mean(v) for k, v in sorted(groups.items())}

    def summary(self) -> dict[str, Any]:
        """The flat metrics (``exact_match``, ``per_family``, ``response_loss``, ...) and per-suite details."""
        out: dict[str, Any] = {}
        for metric in self.scores:
            out[metric] = self.mean(metric)
        out["per_family"] = self.by_category("exact_match")
        out["n"] = len(self.scores.get("exact_match", []))
        out["by_category"] = {m: self.by_category(m) for m in self.scores if m != "exact_match"}
        out["truncated_prompts"] = self.truncated_prompts
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything the evaluation holds, JSON-able: per-example scores as ``[key, category, value]``
        rows by metric (``[key, category, value, weight]`` where the weight is not 1), the examples and
        the truncation count.
        ``from_dict(json.loads(json.dumps(e.to_dict()))) == e``: a stored evaluation compares like a fresh one."""
        return {
            "scores": {
                metric: [[s.key, s.category, s.value] + ([s.weight] if s.weight != 1.0 else []) for s in values]
                for metric, values in self.scores.items()
            },
            "examples": self.examples,
            "truncated_prompts": self.truncated_prompts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelEvaluation:
        """The evaluation :meth:`to_dict` wrote (raises KeyError/ValueError/TypeError on anything else)."""
        return cls(
            scores={
                str(metric): [Score(str(key), str(category), float(value), *(float(w) for w in weight)) for key, category, value, *weight in rows]
                for metric, rows in data["scores"].items()
            },
            examples={str(suite): list(rows) for suite, rows in data["examples"].items()},
            truncated_prompts=int(data["truncated_prompts"]),
        )


def _mean(scores: list[Score]) -> float:
    return weighted_mean([s.value for s in scores], [s.weight for s in scores])

