"""Pure scoring of model outputs against references."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scored:
    record_id: str
    family: str
    prompt: str
    reference: str
    output: str
    exact: bool


@dataclass
class EvalMetrics:
    """Metrics of one model on one eval set; ``metrics()`` is the flat form logged and gated."""

    exact_match: float
    per_family: dict[str, float]
    response_loss: float
    n: int
    examples: list[Scored] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {
            "exact_match": self.exact_match,
            "response_loss": self.response_loss,
            "n": self.n,
            "per_family": dict(self.per_family),
        }


def exact_match(output: str, reference: str) -> bool:
    """Exact match after trimming surrounding whitespace (the only normalisation)."""
    return output.strip() == reference.strip()


def score(records: list[dict[str, Any]], outputs: list[str]) -> list[Scored]:
    if len(records) != len(outputs):
        raise ValueError(f"{len(records)} records but {len(outputs)} outputs")
    scored = []
    for record, output in zip(records, outputs):
        reference = record["messages"][-1]["content"]
        scored.append(
            Scored(
                record_id=record["id"],
                family=record.get("family") or "all",
                prompt=record["messages"][-2]["content"] if len(record["messages"]) > 1 else "",
                reference=reference,
                output=output,
                exact=exact_match(output, reference),
            )
        )
    return scored


def aggregate(scored: list[Scored], response_loss: float) -> EvalMetrics:
    by_family: dict[str, list[bool]] = defaultdict(list)
    for item in scored:
        by_family[item.family].append(item.exact)
    per_family = {name: sum(hits) / len(hits) for name, hits in sorted(by_family.items())}
    overall = sum(s.exact for s in scored) / len(scored) if scored else 0.0
    return EvalMetrics(
        exact_match=overall,
        per_family=per_family,
        response_loss=response_loss,
        n=len(scored),
        examples=scored,
    )
