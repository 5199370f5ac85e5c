"""The response-loss suite: cross-entropy on the reference answers (``eval.response_loss: true|false``)."""

from __future__ import annotations

from tunegate.evaluation.generation import Generated, response_losses
from tunegate.evaluation.registry import Metric, Suite
from tunegate.evaluation.scores import ModelEvaluation, Score
from tunegate.params import EvalParams


def run_response_loss(model, tokenizer, records, params: EvalParams, result: ModelEvaluation, cache: Generated | None = None) -> None:
    per_record, tokens = response_losses(model, tokenizer, records, params.batch_size)
    # Weighted by the answer's token count: the mean is the loss per token, as training reports it.
    result.scores["response_loss"] = [
        Score(str(r["id"]), r.get("family") or "all", loss, float(n)) for r, loss, n in zip(records, per_record, tokens)
    ]


SUITE = Suite(
    name="response_loss",
    section="response_loss",
    params=bool,
    metrics=(Metric("response_loss", higher_is_better=False, unit_interval=False),),
    sources=(__name__,),
    run=run_response_loss,
    progress="response loss",
    report_note="Response loss is per token of the reference answers (as training reports it).",
)
