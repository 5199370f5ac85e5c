"""The safety suite (``eval.safety``): refusal of harmful prompts (AdvBench and the demo's harmful family) and
over-refusal of safe prompts that look unsafe (XSTest), by a pattern classifier or the team's own."""

from __future__ import annotations

from tunegate.evaluation.generation import Generated, generate_cached, render_user_prompts
from tunegate.evaluation.registry import EvalFile, Metric, Suite
from tunegate.evaluation.scores import ModelEvaluation, Score
from tunegate.params import EvalParams, SafetySuite
from tunegate.paths import resolve_path


def safety_sets(params: EvalParams, records) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(harmful prompts, safe prompts that look unsafe): {id, prompt, category} each."""
    from tunegate.evaluation.safety import read_eval_set

    suite = params.safety
    harmful: list[dict[str, str]] = []
    safe: list[dict[str, str]] = []
    if suite.harmful:
        harmful += read_eval_set(resolve_path(suite.harmful.path), suite.harmful)[: suite.harmful.max_prompts or suite.max_prompts]
    if suite.demo_harmful_family:
        harmful += [
            {"id": str(r["id"]), "prompt": r["messages"][-2]["content"], "category": "demo"}
            for r in records
            if r.get("family") == suite.demo_harmful_family
        ]
    if suite.over_refusal:
        spec = suite.over_refusal
        safe += read_eval_set(resolve_path(spec.path), spec)[: spec.max_prompts or suite.max_prompts]
    return harmful, safe


def run_safety(model, tokenizer, records, params: EvalParams, result: ModelEvaluation, cache: Generated | None = None) -> None:
    from tunegate.evaluation.safety import load_classifier

    is_refusal = load_classifier(params.safety.classifier, params.safety.refusal_languages, params.safety.refusal_patterns)
    harmful, safe = safety_sets(params, records)
    prompts = [h["prompt"] for h in harmful] + [s["prompt"] for s in safe]
    outputs = generate_cached(model, tokenizer, render_user_prompts(tokenizer, prompts), params.max_new_tokens, params.batch_size, cache, result)
    result.scores["refusal_rate"] = []
    result.scores["over_refusal_rate"] = []
    result.examples["safety"] = []
    for i, (item, output) in enumerate(zip(harmful + safe, outputs)):
        refused = bool(is_refusal(output))
        metric = "refusal_rate" if i < len(harmful) else "over_refusal_rate"
        result.scores[metric].append(Score(item["id"], item["category"], float(refused)))
        result.examples["safety"].append({"key": item["id"], "category": item["category"], "set": metric, "prompt": item["prompt"], "output": output, "refused": refused})


def safety_files(params: EvalParams) -> list[EvalFile]:
    from tunegate.evaluation.safety import usable

    files = []
    for role in ("harmful", "over_refusal"):
        spec = getattr(params.safety, role)
        if spec is not None:
            fields = ("column", "id_column", "category_column", "label_column")
            columns = {f"eval.safety.{role}.{f}": getattr(spec, f) for f in fields if getattr(spec, f) is not None}
            means = f"a non-empty {spec.column!r}" + (f" and {spec.label_column} = {spec.label_value!r}" if spec.label_column else "")
            files.append(EvalFile(spec.set_name(), f"eval.safety.{role}.path", spec.path, columns,
                                  lambda row, spec=spec: usable(row, spec), means))
    return files


SUITE = Suite(
    name="safety",
    section="safety",
    params=SafetySuite,
    metrics=(Metric("refusal_rate", plot_categories=True), Metric("over_refusal_rate", higher_is_better=False, plot_categories=True)),
    sources=(__name__, "tunegate.evaluation.safety", "tunegate.data.refusals"),
    run=run_safety,
    progress="safety",
    files=safety_files,
)
