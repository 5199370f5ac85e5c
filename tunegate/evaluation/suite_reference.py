"""The reference-task suite: greedy answers to the eval split against its reference answers (``eval.reference``):
exact match (whitespace trimmed), normalised match and ROUGE-L, overall and per family."""

from __future__ import annotations

from typing import Any

from tunegate.data.formats import normalize_texts
from tunegate.evaluation.generation import Generated, generate_cached, render_prompts
from tunegate.evaluation.registry import Metric, Suite
from tunegate.evaluation.scores import ModelEvaluation, Score
from tunegate.params import EvalParams, ReferenceSuite


class ScriptTokenizer:
    """ROUGE tokens for any script (``rouge_score``'s own keeps only [a-z0-9]).

    Casefolded; each character of a script written without spaces (Han, Hiragana,
    Katakana, Thai, Lao, Khmer, Myanmar) is a token; runs of other letters, marks and
    digits (Latin, Cyrillic, Arabic, Devanagari, Hangul, ...) are words. On plain ASCII
    text the tokens equal ``rouge_score``'s default tokenizer's without stemming.
    """

    NO_SPACES = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\u30fc"

    def __init__(self) -> None:
        import regex

        self._pattern = regex.compile(rf"[{self.NO_SPACES}]|[^\W_{self.NO_SPACES}]+")

    def tokenize(self, text: str) -> list[str]:
        return self._pattern.findall(text.casefold())


def rouge_scorer_any_script():
    """A ROUGE-L scorer (``rouge_score.RougeScorer``) that tokenises with :class:`ScriptTokenizer`."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=ScriptTokenizer())


def run_reference(model, tokenizer, records, params: EvalParams, result: ModelEvaluation, cache: Generated | None = None) -> None:
    outputs = generate_cached(model, tokenizer, render_prompts(tokenizer, records), params.max_new_tokens, params.batch_size, cache, result)
    scorer = rouge_scorer_any_script() if params.reference.rouge else None
    for metric in ("exact_match", "normalized_match") + (("rouge_l",) if scorer else ()):
        result.scores[metric] = []
    result.examples["reference"] = []
    # One normalisation pass over every (output, reference) pair.
    normalized = normalize_texts([t for record, output in zip(records, outputs) for t in (output, record["messages"][-1]["content"])])
    for n, (record, output) in enumerate(zip(records, outputs)):
        reference = record["messages"][-1]["content"]
        family = record.get("family") or "all"
        key = str(record["id"])
        result.scores["exact_match"].append(Score(key, family, float(output.strip() == reference.strip())))
        result.scores["normalized_match"].append(Score(key, family, float(normalized[2 * n] == normalized[2 * n + 1])))
        if scorer:
            result.scores["rouge_l"].append(Score(key, family, scorer.score(reference, output)["rougeL"].fmeasure))
        result.examples["reference"].append(
            {"key": key, "category": family, "prompt": record["messages"][-2]["content"], "reference": reference, "output": output}
        )


def worst_regressions(baseline: ModelEvaluation, candidate: ModelEvaluation, limit: int = 5) -> list[dict[str, Any]]:
    """Reference-task examples the baseline got right and the candidate got wrong, lowest ROUGE-L first."""
    base = {e["key"]: e for e in baseline.examples.get("reference", [])}
    base_exact = {s.key: s.value for s in baseline.scores.get("exact_match", [])}
    cand_exact = {s.key: s.value for s in candidate.scores.get("exact_match", [])}
    rouge = {s.key: s.value for s in candidate.scores.get("rouge_l", [])}
    out = []
    for example in candidate.examples.get("reference", []):
        key = example["key"]
        if base_exact.get(key) == 1.0 and cand_exact.get(key) == 0.0:
            out.append({**example, "baseline_output": base[key]["output"], "candidate_output": example["output"], "rouge_l": rouge.get(key)})
    return sorted(out, key=lambda e: (e["rouge_l"] if e["rouge_l"] is not None else 0.0))[:limit]


SUITE = Suite(
    name="reference",
    section="reference",
    params=ReferenceSuite,
    metrics=(Metric("exact_match", plot_categories=True), Metric("normalized_match"), Metric("rouge_l")),
    sources=(__name__, "tunegate.data.formats"),
    run=run_reference,
    progress="reference tasks",
)
