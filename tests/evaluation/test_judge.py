"""The pairwise judge (issue #27) over real HTTP: a loopback server speaking the chat-completions protocol
(tests/judge_server.py, its verdicts by a documented rule), and the in-process judge on the real tiny model."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from tunegate.evaluation.comparison import Reference, compare_all
from tunegate.evaluation.judge import EndpointJudge, InProcessJudge, judge_answers
from tunegate.evaluation.scores import ModelEvaluation
from tunegate.governance.gate import decide_promotion
from tunegate.params import JudgeParams, JudgeSuite, load_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from judge_server import JudgeServer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CATEGORIES = ["writing", "math", "coding"]


def answers(longer: bool, n: int = 12) -> list[dict]:
    """Answers to n questions; the candidate's (longer=True) are longer than the reference's."""
    return [{"key": f"{q}/1", "category": CATEGORIES[q % 3], "turn": 1, "prompt": f"Question {q}: say something.",
             "output": ("a fuller answer with detail " * 2 if longer else "short") + f" #{q}"} for q in range(n)]


def suite(server: JudgeServer | None, **settings) -> JudgeSuite:
    judge = {"kind": "openai", "base_url": server.base_url if server else "http://127.0.0.1:9/v1", "model": "stand-in",
             "timeout_s": 5, "retries": 2} | settings
    return JudgeSuite(enabled=True, judge=JudgeParams(**judge))


def run(mode: str, n: int = 12, **settings):
    with JudgeServer(mode) as server:
        section = suite(server, **settings)
        judge = EndpointJudge(section.judge)
        outcome = judge_answers(section, answers(False, n), answers(True, n), judge)
        judge.close()
    return server, outcome


def test_both_orders_are_sent_and_a_consistent_judge_decides():
    server, outcome = run("longer")
    assert server.requests == 24 == outcome.requests  # 12 pairs, two orders each
    assert sum("#3\n[The End of Assistant A's Answer]" in p for p in server.prompts) == 2  # pair 3: each answer once first
    assert outcome.counts() == {"win": 12, "tie": 0, "loss": 0, "failed": 0, "inconsistent": 0}
    pair = outcome.pairs[0]
    assert (pair["verdict_ab"], pair["verdict_ba"]) == ("B", "A")  # the candidate is B first, then A
    assert outcome.failed is None and outcome.length_difference() > 0
    assert outcome.judge == {"kind": "openai", "base_url": server.base_url, "model": "stand-in"}
    assert len(outcome.prompt_sha256) == 64


def test_an_inconsistent_pair_is_a_tie():
    _, outcome = run("first")
    assert outcome.counts() == {"win": 0, "tie": 12, "loss": 0, "failed": 0, "inconsistent": 12}


def test_an_unparseable_answer_is_retried_then_counted():
    server, outcome = run("garbage_then_longer:1")
    assert server.requests == 48 and outcome.counts()["win"] == 12  # each order: one unparseable answer, one verdict
    assert all(p["attempts"] == 4 for p in outcome.pairs)
    server, outcome = run("garbage", n=4, retries=1)
    assert server.requests == 16  # 4 pairs x 2 orders x (1 + 1 retry)
    assert outcome.counts()["failed"] == 4
    assert outcome.failed.startswith("4 of 4 pairs got no verdict after 2 attempt(s) per order") and "no [[A]]/[[B]]/[[C]] verdict" in outcome.failed


def test_a_few_failures_within_the_share_are_counted_not_fatal():
    with JudgeServer("longer") as server:
        section = suite(server).model_copy(update={"max_failure_share": 0.5})
        judge = EndpointJudge(section.judge)
        reference = answers(False, 4)
        reference[0] = {**reference[0], "output": "x"}
        outcome = judge_answers(section, reference, answers(True, 4), judge)
    assert outcome.failed is None


@pytest.mark.parametrize("mode", ["error:503", "down", "sleep:2"])
def test_an_endpoint_that_fails_fails_the_suite_and_the_gate_closed(mode):
    if mode == "down":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        section = JudgeSuite(enabled=True, judge=JudgeParams(kind="openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=1))
        outcome = judge_answers(section, answers(False, 3), answers(True, 3), EndpointJudge(section.judge))
    else:
        _, outcome = run(mode, n=3, retries=1, timeout_s=0.5)
    expected = {"error:503": "HTTP 503", "down": "ConnectError", "sleep:2": "timeout after 0.5 s"}[mode]
    assert outcome.failed and expected in outcome.failed, outcome.failed
    # The comparison then has no win rate, and the gate's rule fails closed, naming why.
    policy = load_params(REPO / "params" / "demo.yaml", ["gate.min_win_rate=0.4"]).gate
    decision = decide_promotion({}, {"judge": {"failed": outcome.failed}}, policy, [])
    [check] = [c for c in decision.checks if c.rule == "judge win rate"]
    assert not check.passed and check.detail.startswith("the judge suite failed: 3 of 3 pairs") and not decision.passed


def _evaluations(n: int = 30):
    reference, candidate = ModelEvaluation(), ModelEvaluation()
    reference.examples["judge"], candidate.examples["judge"] = answers(False, n), answers(True, n)
    return reference, candidate


def test_the_comparison_gives_the_win_rate_with_its_interval_and_the_gate_judges_it():
    with JudgeServer("longer") as server:
        params = load_params(REPO / "params" / "demo.yaml", [
            "eval.judge.enabled=true", "eval.judge.judge.kind=openai", f"eval.judge.judge.base_url={server.base_url}",
            "eval.judge.judge.model=stand-in", "gate.min_win_rate=0.6"])
        reference, candidate = _evaluations()
        comparison = compare_all(params, Reference("base_model", None), reference, candidate)
    judged = comparison.candidate_metrics["judge"]
    assert judged["win_rate"] == 1.0 == comparison.candidate_metrics["judge_win_rate"] and judged["n"] == 30
    overall = comparison.delta("judge_win_rate")
    assert overall.baseline == 0.5 and overall.delta == 0.5
    assert {d.category for d in comparison.deltas if d.metric == "judge_win_rate"} == {"all", *CATEGORIES}
    decision = decide_promotion(comparison.baseline_metrics, comparison.candidate_metrics, params.gate,
                                [d.to_dict() for d in comparison.deltas])
    [check] = [c for c in decision.checks if c.rule == "judge win rate"]
    assert check.passed and check.detail.startswith("win rate 1.000 against the baseline over 30 pairs")
    assert comparison.judge["pairs"][0]["outcome"] == "win" and server.requests == 60


def test_a_worse_candidate_is_refused_by_the_win_rate_rule():
    with JudgeServer("longer") as server:
        params = load_params(REPO / "params" / "demo.yaml", [
            "eval.judge.enabled=true", "eval.judge.judge.kind=openai", f"eval.judge.judge.base_url={server.base_url}",
            "eval.judge.judge.model=stand-in", "gate.min_win_rate=0.4"])
        shorter, longer = _evaluations()  # the judge prefers the longer answers
        comparison = compare_all(params, Reference("champion", "1"), shorter, longer)
        refused = compare_all(params, Reference("champion", "1"), longer, shorter)  # a candidate the judge likes less
    decision = decide_promotion(refused.baseline_metrics, refused.candidate_metrics, params.gate, [d.to_dict() for d in refused.deltas])
    [check] = [c for c in decision.checks if c.rule == "judge win rate"]
    assert refused.candidate_metrics["judge_win_rate"] == 0.0 and not check.passed
    assert comparison.candidate_metrics["judge_win_rate"] == 1.0


def test_the_in_process_judge_returns_a_verdict_for_every_pair(base_model_path):
    section = JudgeSuite(enabled=True, judge=JudgeParams(kind="in_process", model_path=str(base_model_path)))
    judge = InProcessJudge(section.judge, str(base_model_path))
    reference, candidate = answers(False, 6), answers(True, 6)
    candidate[0] = {**candidate[0], "output": "很好的回答，包含细节。" * 40}  # long, non-English: cut from the left, still judged
    outcome = judge_answers(section, reference, candidate, judge)
    assert outcome.counts()["failed"] == 0 and outcome.failed is None
    assert all(p["verdict_ab"] in "ABC" and p["verdict_ba"] in "ABC" for p in outcome.pairs)
    assert judge.requests == 12
    again = judge_answers(section, reference, candidate, judge)
    assert [p["outcome"] for p in again.pairs] == [p["outcome"] for p in outcome.pairs]  # deterministic


@pytest.mark.parametrize("mode", ["longer", "first"])
def test_bench_judge_measures_agreement_with_human_labels(mode, capsys):
    """bench/judge.py on a small labelled file (tests/evaluation/data/judge_pairs.jsonl, six pairs): the
    length rule agrees with four labels (the two others: a tie and a short answer preferred), and is always
    consistent between the orders; the position-biased judge never is, so everything is a tie."""
    from sklearn.metrics import cohen_kappa_score

    sys.path.insert(0, str(REPO / "bench"))
    import judge as bench_judge

    labels = ["a", "b", "a", "b", "tie", "b"]
    with JudgeServer(mode) as server:
        bench_judge.main(["--pairs", str(REPO / "tests" / "evaluation" / "data" / "judge_pairs.jsonl"),
                          "--base-url", server.base_url, "--model", "stand-in"])
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"] == result["judged"] == 6 and result["requests"] == 12 == server.requests
    if mode == "longer":
        verdicts = ["a", "b", "a", "b", "b", "a"]
        assert result["agreement"] == pytest.approx(4 / 6) and result["position_consistency"] == 1.0
    else:
        verdicts = ["tie"] * 6
        assert result["agreement"] == pytest.approx(1 / 6) and result["position_consistency"] == 0.0
    assert result["cohen_kappa"] == pytest.approx(cohen_kappa_score(labels, verdicts, labels=["a", "b", "tie"]))


def test_the_in_process_judge_scores_every_token_where_the_options_differ_beyond_the_letter(base_model_path, monkeypatch):
    """A tokenizer that splits the verdicts differently (``[[C]]`` in one token, say) gets each option scored in
    full; the verdicts still always parse."""
    section = JudgeSuite(enabled=True, judge=JudgeParams(kind="in_process", model_path=str(base_model_path)))
    judge = InProcessJudge(section.judge, str(base_model_path))
    real = judge._options

    def uneven(rendered):
        prefix, options = real(rendered)
        assert len({tuple(o[1:]) for o in options}) == 1  # stories260K: the fast path's shape
        return prefix, [options[0], options[1], options[2][:1]]  # C without its "]]"

    monkeypatch.setattr(judge, "_options", uneven)
    outcome = judge_answers(section, answers(False, 4), answers(True, 4), judge)
    assert outcome.counts()["failed"] == 0 and all(p["verdict_ab"] in "ABC" for p in outcome.pairs)
