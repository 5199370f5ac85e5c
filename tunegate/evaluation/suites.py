"""The evaluation suites: response loss, reference tasks, verifiable instruction following, safety.

Each suite scores one model example by example (``Score``: key, category, value), so the
baseline and the candidate can be compared pairwise (``compare``) with bootstrap intervals.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunegate.data.formats import normalize_texts
from tunegate.evaluation.ifeval import CHECKERS, IFPrompt, read_ifeval, score_prompt
from tunegate.evaluation.stats import Delta, paired_bootstrap, weighted_mean
from tunegate.params import EvalParams
from tunegate.paths import resolve_path

# --- generation and response loss: what every suite runs on a model ------------------------------


def render_prompts(tokenizer, records: list[dict[str, Any]]) -> list[str]:
    """The prompt of each record (all turns before the final answer, its tools) through the chat template."""
    from tunegate.data.tokenize import render_prompt_of

    return [render_prompt_of(tokenizer, r) for r in records]


def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, progress=None,
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """Greedy generation, batched with left padding and the KV cache; returns the decoded continuations.

    Generation stops on any stop token: the tokenizer's EOS, the template's end-of-turn token
    and the model's own ``generation_config`` EOS list (:func:`tunegate.data.templates.stop_token_ids`).
    Outputs equal one-prompt-at-a-time generation (``bench/eval.py`` checks it). Prompts longer
    than ``max_prompt_tokens`` keep their end (the generation prompt).
    """
    import torch

    from transformers import GenerationConfig

    from tunegate.data.templates import stop_token_ids

    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    model.eval()
    # Greedy, bounded only by max_new_tokens; the model's own max_length would collide.
    model.generation_config.max_length = None
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_token_ids(tokenizer, model.generation_config),
        bos_token_id=tokenizer.bos_token_id,
    )
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        enc = tokenizer(
            batch, add_special_tokens=False, padding=True, return_tensors="pt",
            truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens,
        )
        with torch.no_grad():
            generated = model.generate(**enc, generation_config=config)
        new_tokens = generated[:, enc["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        if progress:
            progress(len(batch))
    return [o.strip() for o in outputs]


def response_losses(model, tokenizer, records: list[dict[str, Any]], batch_size: int) -> tuple[list[float], list[int]]:
    """Cross-entropy on the final assistant turn's tokens (EOS included): the mean per record, and each
    record's number of answer tokens (its weight in the token-weighted mean, :func:`response_loss`)."""
    import torch

    from tunegate.data.templates import end_of_turn
    from tunegate.data.tokenize import render_with_prompt, turn_end, unbounded_length

    rendered = [render_with_prompt(tokenizer, r) for r in records]
    prompts = [prompt for _, prompt in rendered]
    eot = end_of_turn(tokenizer)
    # The answer up to and including its end-of-turn token: what training labels, nothing after it.
    fulls = [
        full[: turn_end(full, len(prompt), r["messages"][-1]["content"], eot)]
        for r, (full, prompt) in zip(records, rendered)
    ]
    per_record: list[float] = []
    tokens: list[int] = []
    tokenizer.padding_side = "right"
    model.eval()
    # Longer than the model's context: keep the end (the answer), as generation keeps the prompt's end.
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    for start in range(0, len(records), batch_size):
        batch_full = fulls[start : start + batch_size]
        batch_prompt = prompts[start : start + batch_size]
        with unbounded_length(tokenizer):
            full_ids = tokenizer(batch_full, add_special_tokens=False)["input_ids"]
            prompt_lens = [len(ids) for ids in tokenizer(batch_prompt, add_special_tokens=False)["input_ids"]]
        cut = [max(0, len(ids) - context) if context else 0 for ids in full_ids]
        rows = [ids[c:] for ids, c in zip(full_ids, cut)]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        enc = {
            "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        }
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        for row, (prompt_len, c) in enumerate(zip(prompt_lens, cut)):
            labels[row, : max(prompt_len - c, 0)] = -100
        with torch.no_grad():
            logits = model(**enc).logits[:, :-1, :]
        targets = labels[:, 1:]
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
        ).view(targets.shape)
        counts = (targets != -100).sum(dim=1)
        sums = token_loss.sum(dim=1)
        per_record.extend((sums / counts.clamp(min=1)).tolist())
        tokens.extend(counts.tolist())
    return per_record, tokens


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


def count_longer(tokenizer, prompts: list[str], limit: int) -> int:
    """How many rendered prompts have more than ``limit`` tokens (counted without truncation or warning)."""
    from tunegate.data.tokenize import unbounded_length

    if not prompts:
        return 0
    with unbounded_length(tokenizer):
        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    return sum(length > limit for length in lengths)


def _generate(
    model, tokenizer, rendered: list[str], max_new_tokens: int, batch_size: int,
    cache: Generated | None = None, result: ModelEvaluation | None = None,
) -> list[str]:
    """Greedy outputs for rendered prompts; ``cache`` (one per model evaluation) answers prompts another
    suite already generated with the same budget, e.g. the demo's harmful family in reference and safety.
    Prompts too long for the context keep their end; ``result.truncated_prompts`` counts them."""
    cache = {} if cache is None else cache
    todo = list(dict.fromkeys(p for p in rendered if (p, max_new_tokens) not in cache))
    if todo:
        context = getattr(model.config, "max_position_embeddings", None) or 2048
        limit = max(context - max_new_tokens, 8)
        if result is not None:
            result.truncated_prompts += count_longer(tokenizer, todo, limit)
        outputs = generate(model, tokenizer, todo, max_new_tokens, batch_size, max_prompt_tokens=limit)
        cache.update({(prompt, max_new_tokens): output for prompt, output in zip(todo, outputs)})
    return [cache[(prompt, max_new_tokens)] for prompt in rendered]


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
    outputs = _generate(model, tokenizer, render_prompts(tokenizer, records), params.max_new_tokens, params.batch_size, cache, result)
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


def run_response_loss(model, tokenizer, records, params: EvalParams, result: ModelEvaluation, cache: Generated | None = None) -> None:
    per_record, tokens = response_losses(model, tokenizer, records, params.batch_size)
    # Weighted by the answer's token count: the mean is the loss per token, as training reports it.
    result.scores["response_loss"] = [
        Score(str(r["id"]), r.get("family") or "all", loss, float(n)) for r, loss, n in zip(records, per_record, tokens)
    ]


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
    outputs = _generate(model, tokenizer, _render(tokenizer, [i.prompt for i in items]), params.ifeval.max_new_tokens, params.batch_size, cache, result)
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
    outputs = _generate(model, tokenizer, _render(tokenizer, prompts), params.max_new_tokens, params.batch_size, cache, result)
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
    """Candidate - baseline for every metric, overall and per category, with paired bootstrap intervals;
    each of a metric's k categories also with its simultaneous interval over the k (Bonferroni), which the
    gate's family rule judges."""
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
                    weights=[c.weight for _, c in members],
                    metric=metric,
                    category=category,
                    resamples=params.bootstrap_resamples,
                    confidence=params.confidence,
                    seed=params.seed,
                    higher_is_better=higher,
                    adjusted_over=None if category == "all" else len(groups),
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


def eval_files(params: EvalParams) -> dict[str, tuple[str, str]]:
    """Every enabled eval file: set name (``ifeval``, then each safety set's name: ``advbench``,
    ``xstest`` for the defaults) -> (params key, path as written)."""
    return {check.name: (check.key, check.path) for check in _file_checks(params)}


def load_items_md5(params: EvalParams) -> dict[str, str]:
    """md5 of each frozen eval file the suites read (for MLflow, like training data), by set name."""
    from tunegate.data.digest import file_md5

    paths = {name: resolve_path(path) for name, (_, path) in eval_files(params).items()}
    return {name: file_md5(path) for name, path in paths.items() if path.is_file()}


IFEVAL_COLUMNS = ("key", "prompt", "instruction_id_list", "kwargs")


@dataclass(frozen=True)
class _FileCheck:
    name: str  # the set's name: ifeval, advbench, xstest, ...
    key: str  # params key of the path, e.g. eval.safety.harmful.path
    path: str  # as written in params
    columns: dict[str, str]  # who asks for it (a params key or a format) -> column
    is_usable: Callable[[dict[str, Any]], bool]
    usable_means: str  # for the message when no row is usable


def _ifeval_usable(row: dict[str, Any]) -> bool:
    ids = row.get("instruction_id_list")
    return bool(str(row.get("prompt") or "").strip()) and isinstance(ids, list) and all(i in CHECKERS for i in ids)


def _file_checks(params: EvalParams) -> list[_FileCheck]:
    from tunegate.evaluation.safety import usable

    checks = []
    if params.ifeval.enabled and params.ifeval.path:
        columns = {f"IFEval's format ({c})": c for c in IFEVAL_COLUMNS}
        means = "a prompt and only supported instruction ids"
        checks.append(_FileCheck("ifeval", "eval.ifeval.path", params.ifeval.path, columns, _ifeval_usable, means))
    if params.safety.enabled:
        for role in ("harmful", "over_refusal"):
            spec = getattr(params.safety, role)
            if spec is not None:
                fields = ("column", "id_column", "category_column", "label_column")
                columns = {f"eval.safety.{role}.{f}": getattr(spec, f) for f in fields if getattr(spec, f) is not None}
                means = f"a non-empty {spec.column!r}" + (
                    f" and {spec.label_column} = {spec.label_value!r}" if spec.label_column else ""
                )
                checks.append(
                    _FileCheck(spec.set_name(), f"eval.safety.{role}.path", spec.path, columns,
                               lambda row, spec=spec: usable(row, spec), means)
                )
    return checks


def _file_problems(check: _FileCheck) -> list[str]:
    """Problems of one eval file that exists: missing columns, no usable rows (may raise on a bad file)."""
    from tunegate.evaluation.safety import iter_rows

    path = resolve_path(check.path)
    if check.key == "eval.ifeval.path" and path.suffix.lower() != ".jsonl":
        return [f"{check.key}: {path} is not JSONL; IFEval's input is one JSON object per line"]
    seen: set[str] = set()
    rows = usable = 0
    for row in iter_rows(path):
        seen.update(row)
        rows += 1
        usable += bool(check.is_usable(row))
    if not rows:
        return [f"{check.key}: {path} has no rows"]
    have = ", ".join(sorted(seen))
    problems = [
        f"{check.key}: {path} has no column {column!r} (asked for by {asker}); its columns: {have}; "
        f"set {asker} to one of them"
        for asker, column in check.columns.items() if column not in seen
    ]
    if not problems and not usable:
        problems.append(f"{check.key}: {path} has no usable rows: none of its {rows} rows has {check.usable_means}")
    return problems


def eval_file_problems(params: EvalParams) -> list[str]:
    """One readable sentence per problem with an enabled eval file (IFEval, harmful, over-refusal set):
    the file does not exist, a column is missing, no usable rows, the file cannot be parsed.

    Never raises for a bad file; reads each (small) file once, loads no model. For a preflight.
    """
    problems: list[str] = []
    for check in _file_checks(params):
        try:
            path = resolve_path(check.path)
            if not path.is_file():
                problems.append(
                    f"{check.key}: {check.path!r} does not exist (resolved to {path}); fix the path, or disable "
                    "the set (null) or its suite (enabled: false)"
                )
                continue
            problems += _file_problems(check)
        except Exception as error:  # a preflight reports bad files, it does not crash on them
            problems.append(f"{check.key}: {check.path!r} cannot be read: {type(error).__name__}: {error}")
    return problems
