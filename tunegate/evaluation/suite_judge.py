"""The judge suite's per-model part: each model's greedy answers to the judge's open prompts (``eval.judge``).

A pairwise judgement needs two models' answers, so this suite scores nothing on one model: it keeps the answers
(``examples["judge"]``: key ``<question id>/<turn>``, category, the turn's prompt, the answer), which are cached
with the rest of a model's evaluation, and the comparison (:mod:`tunegate.evaluation.comparison`) sends the
baseline's and the candidate's to the judge (:mod:`tunegate.evaluation.judge`) in both orders: ``judge_win_rate``.
With ``turns: both`` the second turn is asked after the model's own first answer.
"""

from __future__ import annotations

import json
from typing import Any

from tunegate.evaluation.generation import Generated, generate_cached, render_prompts
from tunegate.evaluation.registry import EvalFile, Metric, Suite
from tunegate.evaluation.scores import ModelEvaluation
from tunegate.params import EvalParams, JudgeSuite
from tunegate.paths import resolve_path


def questions(section: JudgeSuite) -> list[dict[str, Any]]:
    """The judge set's questions, in file order (the first ``max_questions``): id, category and turns (MT-Bench's
    ``turns``, or one ``prompt``)."""
    rows = []
    for n, line in enumerate(resolve_path(section.questions).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        turns = row.get("turns") or ([row["prompt"]] if row.get("prompt") else [])
        if turns:
            rows.append({"id": str(row.get("question_id", n)), "category": row.get("category") or "all", "turns": list(turns)})
    return rows[: section.max_questions] if section.max_questions else rows


def _turn_records(rows: list[dict[str, Any]], answers: dict[str, str], turn: int) -> list[dict[str, Any]]:
    records = []
    for row in rows:
        if len(row["turns"]) < turn:
            continue
        messages = []
        for k in range(turn - 1):
            messages += [{"role": "user", "content": row["turns"][k]}, {"role": "assistant", "content": answers[f"{row['id']}/{k + 1}"]}]
        messages += [{"role": "user", "content": row["turns"][turn - 1]}, {"role": "assistant", "content": ""}]
        records.append({"id": f"{row['id']}/{turn}", "family": row["category"], "messages": messages, "turn": turn})
    return records


def run_judge_answers(model, tokenizer, records, params: EvalParams, result: ModelEvaluation, cache: Generated | None = None) -> None:
    section: JudgeSuite = params.judge
    rows = questions(section)
    answers: dict[str, str] = {}
    result.examples["judge"] = []
    for turn in (1, 2) if section.turns == "both" else (1,):
        turn_records = _turn_records(rows, answers, turn)
        outputs = generate_cached(model, tokenizer, render_prompts(tokenizer, turn_records), section.max_new_tokens,
                                  params.batch_size, cache, result)
        for record, output in zip(turn_records, outputs):
            answers[record["id"]] = output
            # The judge sees the turn's question; for a second turn, after the first turn's exchange.
            prompt = record["messages"][-2]["content"]
            if turn > 1:
                first = record["messages"][0]["content"]
                prompt = f"(Earlier in the conversation the user asked: {first!r} and this assistant answered: {record['messages'][1]['content']!r})\n{prompt}"
            result.examples["judge"].append({"key": record["id"], "category": record["family"], "turn": turn,
                                             "prompt": prompt, "output": output})


def judge_files(params: EvalParams) -> list[EvalFile]:
    section = params.judge
    return [EvalFile("judge_questions", "eval.judge.questions", section.questions, {},
                     lambda row: bool(row.get("turns") or row.get("prompt")), "turns or a prompt", ".jsonl", "a JSONL file")]


def judge_problems(params: EvalParams) -> list[str]:
    """The endpoint's API key is named but not set."""
    import os

    settings = params.judge.judge
    if settings.kind == "openai" and settings.api_key_env and not os.environ.get(settings.api_key_env):
        return [f"eval.judge.judge.api_key_env: the environment variable {settings.api_key_env} is not set; export it "
                "(the key never goes in params), or set api_key_env: null for a server without one"]
    if settings.kind == "in_process" and settings.model_path and not resolve_path(settings.model_path).is_dir():
        return [f"eval.judge.judge.model_path: {settings.model_path!r} is not a directory (resolved to "
                f"{resolve_path(settings.model_path)}); name a local model, or null for the run's base model"]
    return []


SUITE = Suite(
    name="judge",
    section="judge",
    params=JudgeSuite,
    metrics=(Metric("judge_win_rate", plot_categories=True),),
    sources=(__name__, "tunegate.evaluation.judge"),
    run=run_judge_answers,
    progress="judge answers",
    files=judge_files,
    problems=judge_problems,
    report_note="The judge's win rate is the candidate's share of pairs won against the baseline, judged in both "
    "orders (inconsistent orders and ties count half), shown against parity (0.5).",
)
