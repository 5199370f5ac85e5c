"""A suite that lives in the tests folder (issue #25): one module, registered with one line
(``REGISTRY.register(SUITE)``, or ``with REGISTRY.registered(SUITE):`` in a test), and nothing else edited.

``planted_brevity``: the share of the eval split's prompts the model answers in at most
``eval.planted.max_words`` words. It reads the reference suite's greedy answers from the evaluation's
generation cache (same prompts, same budget), so it costs nothing beyond them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tunegate.evaluation.generation import generate_cached, render_prompts
from tunegate.evaluation.registry import Metric, Suite
from tunegate.evaluation.scores import Score


class PlantedParams(BaseModel):
    """``eval.planted``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    max_words: int = Field(3, ge=1, description="an answer of at most this many words counts as brief")


def run_planted(model, tokenizer, records, params, result, cache=None) -> None:
    outputs = generate_cached(model, tokenizer, render_prompts(tokenizer, records), params.max_new_tokens, params.batch_size, cache, result)
    limit = params.planted.max_words
    result.scores["planted_brevity"] = [
        Score(str(r["id"]), r.get("family") or "all", float(len(output.split()) <= limit)) for r, output in zip(records, outputs)
    ]


SUITE = Suite(
    name="planted",
    section="planted",
    params=PlantedParams,
    metrics=(Metric("planted_brevity"),),
    sources=(__name__,),
    run=run_planted,
    progress="planted brevity",
    report_note="Planted brevity is the share of answers of at most eval.planted.max_words words.",
)
