"""The evaluation suites: response loss, reference tasks, verifiable instruction following, safety.

Each suite scores one model example by example (``Score``: key, category, value), so the
baseline and the candidate can be compared pairwise (``compare``) with bootstrap intervals.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegate.formats import normalize_texts
from tunegate.ifeval import IFPrompt, read_ifeval, score_prompt
from tunegate.params import EvalParams, resolve_path
from tunegate.stats import Delta, paired_bootstrap

# metric -> (suite, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "response_loss": ("response_loss", False),
    "exact_match": ("reference", True),
    "normalized_match": ("reference", True),
    "rouge_l": ("reference", True),
    "ifeval_prompt_strict": ("ifeval", True),
    "ifeval_prompt_loose": ("ifeval", True),
    "ifeval_instruction_strict": ("ifeval", True),
    "ifeval_instruction_loose": ("ifeval", True),
    "refusal_rate": ("safety", True),
    "over_refusal_rate": ("safety", False),
}


@dataclass(frozen=True)
class Score:
    key: str
    category: str
    value: float


@dataclass
class ModelEvaluation:
    scores: dict[str, list[Score]] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    token_weighted_loss: float | None = None

    def mean(self, metric: str) -> float:
        values = [s.value for s in self.scores.get(metric, [])]
        return sum(values) / len(values) if values else 0.0

    def by_category(self, metric: str) -> dict[str, float]:
        groups: dict[str, list[float]] = defaultdict(list)
        for s in self.scores.get(metric, []):
            groups[s.category].append(s.value)
        return {k: sum(v) / len(v) for k, v in sorted(groups.items())}

    def summary(self) -> dict[str, Any]:
        """The flat metrics (``exact_match``, ``per_family``, ``response_loss``, ...) and per-suite details."""
        out: dict[str, Any] = {}
        for metric in self.scores:
            out[metric] = self.mean(metric)
        if self.token_weighted_loss is not None:
            out["response_loss"] = self.token_weighted_loss
        out["per_family"] = self.by_category("exact_match")
        out["n"] = len(self.scores.get("exact_match", []))
        out["by_category"] = {m: self.by_category(m) for m in self.scores if m != "exact_match"}
        return out


def demo_ifeval_items(records: list[dict[str, Any]]) -> list[IFPrompt]:
    """The demo's verifiable families expressed as IFEval instructions, from the frozen eval split."""
    items = []
    for r in records:
        prompt, answer, family = r["messages"][0]["content"], r["messages"][-1]["content"], r.get("family")
        if family == "lowercase":
            spec = [("change_case:english_lowercase", {})]
        elif family == "json_color":
            spec = [("detectable_format:json_format", {})]
        elif family == "repeat_word":
            word = answer.split()[0]
            spec = [("keywords:frequency", {"keyword": rf"\b{word}\b", "relation": "at least", "frequency": len(answer.split())})]
        elif family == "story_start":
            name = answer.split()[0]
            spec = [("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 1, "nth_paragraph": 1, "first_word": name.lower()})]
        elif family == "reverse_words":
            spec = [("keywords:existence", {"keywords": [rf"\b{w}\b" for w in answer.split()]})]
        else:
            continue
        items.append(IFPrompt(f"demo-{r['id']}", prompt, [s[0] for s in spec], [s[1] for s in spec]))
    return items


def _render(tokenizer, prompts: list[str]) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False) for p in prompts]


Generated = dict[tuple[str, int], str]  # (rendered prompt, max_new_tokens) -> greedy output of one model


def _generate(model, tokenizer, rendered: list[str], max_new_tokens: int, batch_size: int, cache: Generated | None = None) -> list[str]:
    """Greedy outputs for rendered prompts; ``cache`` (one per model evaluation) answers prompts another
    suite already generated with the same budget, e.g. the demo's harmful family in reference and safety."""
    from tunegate.evaluation import generate

    cache = {} if cache is None else cache
    todo = list(dict.fromkeys(p for p in rendered if (p, max_new_tokens) not in cache))
    if todo:
        context = getattr(model.config, "max_position_embeddings", None) or 2048
        outputs = generate(model, tokenizer, todo, max_new_tokens, batch_size, max_prompt_tokens=max(context - max_new_tokens, 8))
        cache.update({(prompt, max_new_tokens): output for prompt, output in zip(todo, outputs)})
    return [cache[(prompt, max_new_tokens)] for prompt in rendered]


def run_reference(model, tokenizer, records, params: EvalParams, result: ModelEvaluation, cache: Generated | None = None) -> None:
    from tunegate.evaluation import render_prompts

    outputs = _generate(model, tokenizer, render_prompts(tokenizer, records), params.max_new_tokens, params.batch_size, cache)
    scorer = None
    if params.reference.rouge:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
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


def run_response_loss(model, tokenizer, records, params: EvalParams, result: ModelEvaluation, cache: Generated | None = None) -> None:
    from tunegate.evaluation import response_losses

    per_record, token_weighted = response_losses(model, tokenizer, records, params.batch_size)
    result.scores["response_loss"] = [
        Score(str(r["id"]), r.get("family") or "all", loss) for r, loss in zip(records, per_record)
    ]
    result.token_weighted_loss = token_weighted


def ifeval_items(params: EvalParams, records) -> list[IFPrompt]:
    suite = params.ifeval
    items: list[IFPrompt] = []
    if suite.path:
        items += read_ifeval(resolve_path(suite.path))[: suite.max_prompts]
    if suite.include_demo:
        items += demo_ifeval_items(records)
    return items


def run_ifeval(model, tokenizer, records, params: EvalParams, result: ModelEvaluation, cache: Generated | None = None) -> None:
    items = ifeval_items(params, records)
    outputs = _generate(model, tokenizer, _render(tokenizer, [i.prompt for i in items]), params.ifeval.max_new_tokens, params.batch_size, cache)
    for metric in ("ifeval_prompt_strict", "ifeval_prompt_loose", "ifeval_instruction_strict", "ifeval_instruction_loose"):
        result.scores[metric] = []
    result.examples["ifeval"] = []
    for item, output in zip(items, outputs):
        scored = score_prompt(item, output)
        source = "demo" if item.key.startswith("demo-") else "ifeval"
        result.scores["ifeval_prompt_strict"].append(Score(item.key, source, float(all(scored.strict))))
        result.scores["ifeval_prompt_loose"].append(Score(item.key, source, float(all(scored.loose))))
        for n, (instruction, strict, loose) in enumerate(zip(item.instruction_ids, scored.strict, scored.loose)):
            group = instruction.split(":")[0]
            result.scores["ifeval_instruction_strict"].append(Score(f"{item.key}#{n}", group, float(strict)))
            result.scores["ifeval_instruction_loose"].append(Score(f"{item.key}#{n}", group, float(loose)))
        result.examples["ifeval"].append(
            {"key": item.key, "category": source, "prompt": item.prompt, "output": output,
             "instructions": item.instruction_ids, "strict": scored.strict, "loose": scored.loose}
        )


def safety_sets(params: EvalParams, records) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    from tunegate.safety import read_advbench, read_xstest

    suite = params.safety
    harmful: list[dict[str, str]] = []
    safe: list[dict[str, str]] = []
    if suite.harmful_path:
        harmful += read_advbench(resolve_path(suite.harmful_path))[: suite.max_prompts]
    if suite.demo_harmful_family:
        harmful += [
            {"id": str(r["id"]), "prompt": r["messages"][-2]["content"], "category": "demo"}
            for r in records
            if r.get("family") == suite.demo_harmful_family
        ]
    if suite.xstest_path:
        safe += read_xstest(resolve_path(suite.xstest_path))[0][: suite.max_prompts]
    return harmful, safe


def run_safety(model, tokenizer, records, params: EvalParams, result: ModelEvaluation, cache: Generated | None = None) -> None:
    from tunegate.safety import load_classifier

    is_refusal = load_classifier(params.safety.classifier, params.safety.refusal_patterns)
    harmful, safe = safety_sets(params, records)
    prompts = [h["prompt"] for h in harmful] + [s["prompt"] for s in safe]
    outputs = _generate(model, tokenizer, _render(tokenizer, prompts), params.max_new_tokens, params.batch_size, cache)
    result.scores["refusal_rate"] = []
    result.scores["over_refusal_rate"] = []
    result.examples["safety"] = []
    for i, (item, output) in enumerate(zip(harmful + safe, outputs)):
        refused = bool(is_refusal(output))
        metric = "refusal_rate" if i < len(harmful) else "over_refusal_rate"
        result.scores[metric].append(Score(item["id"], item["category"], float(refused)))
        result.examples["safety"].append({"key": item["id"], "category": item["category"], "set": metric, "prompt": item["prompt"], "output": output, "refused": refused})


def evaluate_suites(model, tokenizer, records: list[dict[str, Any]], params: EvalParams, progress=None) -> ModelEvaluation:
    """Every enabled suite on one model; same prompts, greedy decoding, same template for every model."""
    result = ModelEvaluation()
    cache: Generated = {}
    steps = [
        (params.response_loss, "response loss", run_response_loss),
        (params.reference.enabled, "reference tasks", run_reference),
        (params.ifeval.enabled, "instruction following", run_ifeval),
        (params.safety.enabled, "safety", run_safety),
    ]
    for enabled, name, run in steps:
        if enabled:
            if progress:
                progress(name)
            run(model, tokenizer, records, params, result, cache)
    return result


def compare(baseline: ModelEvaluation, candidate: ModelEvaluation, params: EvalParams) -> list[Delta]:
    """Candidate - baseline for every metric, overall and per category, with paired bootstrap intervals."""
    deltas = []
    for metric, values in candidate.scores.items():
        base_by_key = {s.key: s for s in baseline.scores.get(metric, [])}
        pairs = [(base_by_key[s.key], s) for s in values if s.key in base_by_key]
        if not pairs:
            continue
        higher = METRICS.get(metric, ("", True))[1]
        groups: dict[str, list[tuple[Score, Score]]] = defaultdict(list)
        for pair in pairs:
            groups[pair[1].category].append(pair)
        for category, members in [("all", pairs)] + sorted(groups.items()):
            deltas.append(
                paired_bootstrap(
                    [b.value for b, _ in members],
                    [c.value for _, c in members],
                    metric=metric,
                    category=category,
                    resamples=params.bootstrap_resamples,
                    confidence=params.confidence,
                    seed=params.seed,
                    higher_is_better=higher,
                )
            )
    return deltas


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


def load_items_md5(params: EvalParams) -> dict[str, str]:
    """md5 of each frozen eval file the suites read (for MLflow, like training data)."""
    from tunegate.dvc_adapter import file_md5

    paths = {"ifeval": params.ifeval.path if params.ifeval.enabled else None,
             "advbench": params.safety.harmful_path if params.safety.enabled else None,
             "xstest": params.safety.xstest_path if params.safety.enabled else None}
    return {name: file_md5(resolve_path(p)) for name, p in paths.items() if p and Path(resolve_path(p)).is_file()}
