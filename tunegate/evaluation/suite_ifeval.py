"""The instruction-following suite (``eval.ifeval``): IFEval's verifiable instructions, from its own file and
from the eval split's verifiable demo families, strict and loose, per prompt and per instruction."""

from __future__ import annotations

from typing import Any

from tunegate.evaluation.generation import Generated, generate_cached, render_user_prompts
from tunegate.evaluation.ifeval import CHECKERS, IFPrompt, read_ifeval, score_prompt
from tunegate.evaluation.registry import EvalFile, Metric, Suite
from tunegate.evaluation.scores import ModelEvaluation, Score
from tunegate.params import EvalParams, IFEvalSuite
from tunegate.paths import resolve_path


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
    outputs = generate_cached(model, tokenizer, render_user_prompts(tokenizer, [i.prompt for i in items]), params.ifeval.max_new_tokens, params.batch_size, cache, result)
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


IFEVAL_COLUMNS = ("key", "prompt", "instruction_id_list", "kwargs")


def _usable(row: dict[str, Any]) -> bool:
    ids = row.get("instruction_id_list")
    return bool(str(row.get("prompt") or "").strip()) and isinstance(ids, list) and all(i in CHECKERS for i in ids)


def ifeval_files(params: EvalParams) -> list[EvalFile]:
    if not params.ifeval.path:
        return []
    columns = {f"IFEval's format ({c})": c for c in IFEVAL_COLUMNS}
    return [EvalFile("ifeval", "eval.ifeval.path", params.ifeval.path, columns, _usable,
                     "a prompt and only supported instruction ids", ".jsonl", "JSONL; IFEval's input is one JSON object per line")]


SUITE = Suite(
    name="ifeval",
    section="ifeval",
    params=IFEvalSuite,
    metrics=(
        Metric("ifeval_prompt_strict"), Metric("ifeval_prompt_loose"),
        Metric("ifeval_instruction_strict"), Metric("ifeval_instruction_loose", plot_categories=True),
    ),
    sources=(__name__, "tunegate.evaluation.ifeval"),
    run=run_ifeval,
    progress="instruction following",
    files=ifeval_files,
)
