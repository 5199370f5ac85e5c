"""A pairwise judge: the candidate's answer against the reference model's (the baseline: champion, else base),
each pair sent to a judge in both orders.

Per pair and order the judge says A, B or C (tie). The candidate *wins* a pair when both orders prefer it, *loses*
when both prefer the reference; an explicit tie in both, or orders that disagree (position bias: *inconsistent*),
count as a tie. Its score is 1 / 0.5 / 0, so the win rate is their mean and its interval the same paired
bootstrap as every other figure (against parity, 0.5: :func:`win_rate_scores`).

Two judges:

- :class:`EndpointJudge`: an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, a hosted API);
  the verdict is the last ``[[A]]``/``[[B]]``/``[[C]]`` of its answer. An unparseable answer, a timeout or an HTTP
  error is retried ``retries`` times, then the pair is counted as failed.
- :class:`InProcessJudge`: a local Hugging Face model (safetensors, no remote code) whose verdict is the option
  (``A]]``, ``B]]``, ``C]]`` after ``[[``) with the highest log-probability: it always parses.

More failed pairs than ``max_failure_share`` fail the suite (:attr:`JudgeOutcome.failed`), and the gate fails
closed on it. The judge's identity, the prompt's sha256 and the decoding settings go with every outcome.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tunegate.evaluation.scores import Score
from tunegate.params import JudgeParams, JudgeSuite

VERDICT = re.compile(r"\[\[([ABC])\]\]")
METRIC = "judge_win_rate"


def fill(template: str, question: str, answer_a: str, answer_b: str) -> str:
    """The judge prompt for one order (placeholders replaced literally: answers may hold braces)."""
    return template.replace("{question}", question).replace("{answer_a}", answer_a).replace("{answer_b}", answer_b)


def prompt_sha256(settings: JudgeParams) -> str:
    return hashlib.sha256(settings.prompt.encode("utf-8")).hexdigest()


@dataclass
class Verdict:
    """One order's verdict: ``A``, ``B``, ``C`` or None (no usable answer after every attempt)."""

    verdict: str | None
    attempts: int = 1
    error: str | None = None


class EndpointJudge:
    """An OpenAI-compatible ``POST {base_url}/chat/completions`` judge (httpx, one request per order)."""

    def __init__(self, settings: JudgeParams) -> None:
        import httpx

        self.settings = settings
        self.requests = 0
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=settings.base_url.rstrip("/"), headers=headers, timeout=settings.timeout_s)

    def identity(self) -> dict[str, Any]:
        return {"kind": "openai", "base_url": self.settings.base_url, "model": self.settings.model}

    def decoding(self) -> dict[str, Any]:
        return {"temperature": self.settings.temperature, "max_tokens": self.settings.max_tokens}

    def close(self) -> None:
        self._client.close()

    def judge(self, prompts: list[str]) -> list[Verdict]:
        return [self._one(prompt) for prompt in prompts]

    def _one(self, prompt: str) -> Verdict:
        import httpx

        error = None
        for attempt in range(1, self.settings.retries + 2):
            self.requests += 1
            try:
                response = self._client.post("/chat/completions", json={
                    "model": self.settings.model, "messages": [{"role": "user", "content": prompt}],
                    "temperature": self.settings.temperature, "max_tokens": self.settings.max_tokens,
                })
                response.raise_for_status()
                text = response.json()["choices"][0]["message"]["content"] or ""
            except httpx.HTTPStatusError as problem:
                error = f"HTTP {problem.response.status_code}"
            except httpx.TimeoutException:
                error = f"timeout after {self.settings.timeout_s:g} s"
            except (httpx.HTTPError, OSError) as problem:
                error = f"{type(problem).__name__}: {problem}"
            except (KeyError, IndexError, TypeError, ValueError) as problem:
                error = f"not a chat-completions answer ({type(problem).__name__})"
            else:
                found = VERDICT.findall(text)
                if found:
                    return Verdict(found[-1], attempt)
                error = f"no [[A]]/[[B]]/[[C]] verdict in {text[:60]!r}"
            if attempt <= self.settings.retries:
                time.sleep(min(0.2 * attempt, 1.0))
        return Verdict(None, self.settings.retries + 1, error)


class InProcessJudge:
    """A local causal LM as judge: for each prompt, the log-probability of each verdict's tokens after ``[[``."""

    OPTIONS = ("A", "B", "C")

    def __init__(self, settings: JudgeParams, default_path: str, batch_size: int = 16) -> None:
        from tunegate.data.templates import load_tokenizer
        from tunegate.tuning.modeling import load_base_model

        self.settings = settings
        self.path = str(settings.model_path or default_path)
        self.model = load_base_model(self.path)
        self.model.eval()
        self.tokenizer = load_tokenizer(self.path, settings.chat_template)
        self.batch_size = batch_size
        self.requests = 0

    def identity(self) -> dict[str, Any]:
        return {"kind": "in_process", "path": self.path}  # (the comparison adds the sha256 of its files)

    def decoding(self) -> dict[str, Any]:
        return {"verdict": "argmax of the log-probabilities of A]], B]], C]] after [["}

    def close(self) -> None:
        pass

    def _rendered(self, prompt: str) -> str:
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
            return text + "Verdict: [["
        return prompt + "\n\nVerdict: [["

    def _options(self, rendered: str) -> tuple[list[int], list[list[int]]]:
        """The prompt's tokens and each verdict's, tokenized in context (``[[A]]`` as the tokenizer splits it
        there, not ``A]]`` alone, which a SentencePiece tokenizer would start with a word boundary): the longest
        prefix all three share, and each option's tokens after it."""
        from tunegate.data.tokenize import unbounded_length

        with unbounded_length(self.tokenizer):  # longer than the context: cut in judge(), the end kept
            fulls = [self.tokenizer(rendered + f"{o}]]", add_special_tokens=False)["input_ids"] for o in self.OPTIONS]
        shared = 0
        while all(shared < len(f) for f in fulls) and len({f[shared] for f in fulls}) == 1:
            shared += 1
        return fulls[0][:shared], [f[shared:] for f in fulls]

    def judge(self, prompts: list[str]) -> list[Verdict]:
        """One verdict per prompt. Where the three options differ only in their first token and share the rest
        (``A``/``B``/``C`` then ``]]``, as for Llama, GPT-2 and Qwen tokenizers), one forward pass over the prompt
        compares that token's log-probability; otherwise each option's tokens are scored in full."""
        import torch

        context = getattr(self.model.config, "max_position_embeddings", None) or 2048
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows, spans, fast = [], [], []
        for prompt in prompts:
            self.requests += 1
            prefix, options = self._options(self._rendered(prompt))
            one_token = all(o for o in options) and len({tuple(o[1:]) for o in options}) == 1
            fast.append(one_token)
            if one_token:
                keep = prefix[-context:]
                rows.append(keep)
                spans.append([(len(keep), [o[0]]) for o in options])
            else:
                for option in options:
                    keep = prefix[-(context - len(option)):]  # too long: the end (the verdict's cue) is kept
                    rows.append(keep + option)
                    spans.append([(len(keep), option)])
        scores: list[list[float]] = []
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                chunk, chunk_spans = rows[start:start + self.batch_size], spans[start:start + self.batch_size]
                width = max(len(r) for r in chunk)
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk])
                logprobs = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
                for row, row_spans in enumerate(chunk_spans):
                    out = []
                    for begin, tokens in row_spans:
                        targets = torch.tensor(tokens)
                        positions = torch.arange(begin - 1, begin - 1 + len(tokens))
                        out.append(float(logprobs[row, positions, targets].sum()))
                    scores.append(out)
        verdicts, cursor = [], 0
        for one_token in fast:
            if one_token:
                per_option = scores[cursor]
                cursor += 1
            else:
                per_option = [scores[cursor + k][0] for k in range(3)]
                cursor += 3
            verdicts.append(Verdict(self.OPTIONS[max(range(3), key=per_option.__getitem__)]))
        return verdicts


def make_judge(settings: JudgeParams, base_model_path: str):
    return EndpointJudge(settings) if settings.kind == "openai" else InProcessJudge(settings, base_model_path)


@dataclass
class JudgeOutcome:
    """Every pair's verdicts and outcome, the counts, and who judged how. ``failed``: why the suite failed
    (too many pairs without a verdict), None when it did not."""

    pairs: list[dict[str, Any]] = field(default_factory=list)
    judge: dict[str, Any] = field(default_factory=dict)
    prompt_sha256: str = ""
    decoding: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    failed: str | None = None

    def judged(self) -> list[dict[str, Any]]:
        return [p for p in self.pairs if p["outcome"] != "failed"]

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("win", "tie", "loss", "failed")}
        for pair in self.pairs:
            out[pair["outcome"]] += 1
        out["inconsistent"] = sum(bool(p.get("inconsistent")) for p in self.pairs)
        return out

    def length_difference(self) -> float | None:
        """Mean characters of the candidate's answer minus the reference's, over the judged pairs (a judge that
        prefers longer answers shows here)."""
        judged = self.judged()
        if not judged:
            return None
        return sum(len(p["candidate"]) - len(p["reference"]) for p in judged) / len(judged)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counts"] = self.counts()
        out["length_difference_chars"] = self.length_difference()
        return out


def outcome_of(ab: Verdict, ba: Verdict) -> tuple[str, bool]:
    """(win | tie | loss | failed, inconsistent) for the candidate: in order AB the reference is A and the
    candidate B; in order BA the candidate is A."""
    if ab.verdict is None or ba.verdict is None:
        return "failed", False
    first = {"A": "reference", "B": "candidate", "C": "tie"}[ab.verdict]
    second = {"A": "candidate", "B": "reference", "C": "tie"}[ba.verdict]
    if first == second:
        return {"candidate": "win", "reference": "loss", "tie": "tie"}[first], False
    return "tie", True


def judge_answers(suite: JudgeSuite, reference: list[dict[str, Any]], candidate: list[dict[str, Any]], judge) -> JudgeOutcome:
    """Both orders of every question both models answered (by key), judged; the outcome says why it failed
    when more than ``max_failure_share`` of the pairs got no verdict."""
    settings = suite.judge
    by_key = {row["key"]: row for row in reference}
    items = [(by_key[row["key"]], row) for row in candidate if row["key"] in by_key]
    prompts = []
    for ref, cand in items:
        prompts.append(fill(settings.prompt, cand["prompt"], ref["output"], cand["output"]))  # AB: reference first
        prompts.append(fill(settings.prompt, cand["prompt"], cand["output"], ref["output"]))  # BA: candidate first
    verdicts = judge.judge(prompts) if prompts else []
    outcome = JudgeOutcome(judge=judge.identity(), prompt_sha256=prompt_sha256(settings), decoding=judge.decoding())
    for n, (ref, cand) in enumerate(items):
        ab, ba = verdicts[2 * n], verdicts[2 * n + 1]
        result, inconsistent = outcome_of(ab, ba)
        outcome.pairs.append({
            "key": cand["key"], "category": cand.get("category", "all"), "prompt": cand["prompt"],
            "reference": ref["output"], "candidate": cand["output"], "verdict_ab": ab.verdict, "verdict_ba": ba.verdict,
            "attempts": ab.attempts + ba.attempts, "error": ab.error or ba.error, "outcome": result, "inconsistent": inconsistent,
        })
    outcome.requests = judge.requests
    failed = outcome.counts()["failed"]
    if not items:
        outcome.failed = "no question was answered by both models"
    elif failed / len(items) > suite.max_failure_share:
        errors = sorted({p["error"] for p in outcome.pairs if p["error"]})
        outcome.failed = (f"{failed} of {len(items)} pairs got no verdict after {settings.retries + 1} attempt(s) per order, "
                          f"more than eval.judge.max_failure_share ({suite.max_failure_share:g}): {'; '.join(errors[:3])}")
    return outcome


def win_rate_scores(outcome: JudgeOutcome) -> tuple[list[Score], list[Score]]:
    """(parity, candidate) per judged pair: the candidate's 1 / 0.5 / 0 against 0.5 each, so that the paired
    bootstrap of their difference is the win rate's interval about parity."""
    value = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    judged = outcome.judged()
    parity = [Score(p["key"], p["category"], 0.5) for p in judged]
    candidate = [Score(p["key"], p["category"], value[p["outcome"]]) for p in judged]
    return parity, candidate


def agreement(pairs: list[dict[str, Any]], judge, suite: JudgeSuite) -> dict[str, Any]:
    """A judge against human labels: ``pairs`` of ``{prompt, answer_a, answer_b, label: a|b|tie}``, each judged in
    both orders as the suite judges (both orders must agree, else a tie). Agreement (share of pairs whose
    combined verdict is the label), Cohen's kappa over the three classes (scikit-learn) and position-swap
    consistency (share of pairs whose two orders agree)."""
    from sklearn.metrics import cohen_kappa_score

    labels = []
    for n, pair in enumerate(pairs):
        label = str(pair.get("label", "")).strip().lower()
        if label not in ("a", "b", "tie"):
            raise ValueError(f"pair {n + 1}: label {pair.get('label')!r} is not a, b or tie")
        labels.append(label)
    reference = [{"key": str(n), "prompt": p["prompt"], "output": p["answer_a"]} for n, p in enumerate(pairs)]
    candidate = [{"key": str(n), "prompt": p["prompt"], "output": p["answer_b"], "category": "all"} for n, p in enumerate(pairs)]
    outcome = judge_answers(suite, reference, candidate, judge)
    verdicts = [{"win": "b", "loss": "a", "tie": "tie", "failed": "failed"}[p["outcome"]] for p in outcome.pairs]
    judged = [(label, verdict) for label, verdict in zip(labels, verdicts) if verdict != "failed"]
    human, machine = [x for x, _ in judged], [y for _, y in judged]
    kappa = float(cohen_kappa_score(human, machine, labels=["a", "b", "tie"])) if len(set(human) | set(machine)) > 1 else None
    return {
        "pairs": len(pairs), "judged": len(judged), "failed": len(pairs) - len(judged),
        "agreement": sum(x == y for x, y in judged) / len(judged) if judged else None,
        "cohen_kappa": kappa,
        "position_consistency": sum(not p["inconsistent"] for p in outcome.judged()) / len(judged) if judged else None,
        "requests": outcome.requests, "judge": outcome.judge, "prompt_sha256": outcome.prompt_sha256,
    }
