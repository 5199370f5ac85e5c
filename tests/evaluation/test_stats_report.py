"""Bootstrap intervals and the report, on hand-made scores."""

import pytest

from tunegate.evaluation.report import plots, render_html, render_markdown
from tunegate.evaluation.stats import paired_bootstrap
from tunegate.evaluation.suite_ifeval import demo_ifeval_items
from tunegate.evaluation.suites import ModelEvaluation, Score, compare, worst_regressions
from tunegate.governance.gate import decide_promotion, verdict_cell
from tunegate.params import EvalParams, GateParams


def test_bootstrap_is_seeded_and_brackets_the_delta():
    base = [1.0] * 50 + [0.0] * 50
    cand = [1.0] * 30 + [0.0] * 70
    a = paired_bootstrap(base, cand, metric="m", seed=3)
    b = paired_bootstrap(base, cand, metric="m", seed=3)
    assert a == b
    assert a.low <= a.delta <= a.high and a.delta == pytest.approx(-0.2)
    assert a.regression and not a.improvement
    import random

    rng = random.Random(0)
    xs, ys = [rng.random() for _ in range(60)], [rng.random() for _ in range(60)]
    assert paired_bootstrap(xs, ys, metric="m", seed=1) == paired_bootstrap(xs, ys, metric="m", seed=1)
    assert paired_bootstrap(xs, ys, metric="m", seed=1).low != paired_bootstrap(xs, ys, metric="m", seed=2).low


def test_a_weighted_metric_is_compared_per_token():
    """Response loss is a mean per token (as training reports it): a long answer weighs more than a short
    one, in the figures and in every resample; the summary shows the figure the delta is computed from."""
    short, long = Score("a", "f", 4.0, 2.0), Score("b", "f", 1.0, 8.0)
    base, cand = ModelEvaluation(), ModelEvaluation()
    base.scores["response_loss"] = [short, long]
    cand.scores["response_loss"] = [Score("a", "f", 2.0, 2.0), Score("b", "f", 0.5, 8.0)]
    assert base.mean("response_loss") == pytest.approx((4.0 * 2 + 1.0 * 8) / 10)  # 1.6, not the per-record 2.5
    [overall, family] = compare(base, cand, EvalParams(bootstrap_resamples=200))
    assert overall.baseline == base.summary()["response_loss"] and overall.candidate == cand.summary()["response_loss"]
    assert overall.delta == pytest.approx(0.8 - 1.6) and overall.low <= overall.delta <= overall.high
    assert family.baseline == base.by_category("response_loss")["f"]
    # Equal weights: the plain mean and the plain bootstrap.
    plain = paired_bootstrap([1.0, 0.0, 1.0], [0.0, 0.0, 1.0], metric="m", seed=4)
    assert plain == paired_bootstrap([1.0, 0.0, 1.0], [0.0, 0.0, 1.0], metric="m", seed=4, weights=[5.0, 5.0, 5.0])
    with pytest.raises(ValueError, match="2 weights for 3 examples"):
        paired_bootstrap([1.0, 0.0, 1.0], [0.0, 0.0, 1.0], metric="m", weights=[1.0, 2.0])


def test_each_category_has_its_simultaneous_interval_over_the_metrics_categories():
    """Issue #24: nine families, each also at 1 - 0.05/9, expanded for its 40 items: wider than its own 95%
    interval, from the same resamples; the overall figure has none."""
    from tunegate.evaluation.stats import expanded_tail

    import random

    rng = random.Random(5)
    base, cand = ModelEvaluation(), ModelEvaluation()
    base.scores["exact_match"] = [Score(f"k{i}", f"f{i % 9}", float(rng.random() < 0.9)) for i in range(360)]
    cand.scores["exact_match"] = [Score(f"k{i}", f"f{i % 9}", float(rng.random() < 0.9)) for i in range(360)]
    deltas = compare(base, cand, EvalParams())
    overall, families = deltas[0], deltas[1:]
    assert overall.category == "all" and overall.adjusted_low is None and overall.adjusted_regression is None
    assert len(families) == 9
    for d in families:
        assert d.adjusted_over == 9 and d.adjusted_confidence == pytest.approx(1 - 0.05 / 9) and d.confidence == 0.95
        assert d.adjusted_low <= d.low <= d.delta <= d.high <= d.adjusted_high
        assert d.adjusted_regression is (d.adjusted_high < 0)
    assert any(d.adjusted_low < d.low for d in families)
    assert compare(base, cand, EvalParams()) == deltas  # seeded
    # The expansion: a smaller tail than the nominal one, approaching it as the sample grows.
    assert expanded_tail(0.05 / 9, 40) < 0.05 / 18 < expanded_tail(0.05 / 9, 100_000) * 1.01


def test_a_metric_no_rule_judges_is_not_gated():
    checks = [{"rule": "r", "passed": True, "detail": "", "metric": "refusal_rate", "category": "all", "threshold": "no significant drop"}]
    assert verdict_cell(checks, "refusal_rate") == "PASS (no significant drop)"
    assert verdict_cell(checks, "rouge_l") == verdict_cell(checks, "refusal_rate", "advbench") == "not gated"


def test_no_regression_when_interval_spans_zero():
    base = [1.0, 0.0] * 10
    cand = [0.0, 1.0] * 10
    delta = paired_bootstrap(base, cand, metric="m")
    assert delta.low < 0 < delta.high and not delta.regression


def test_lower_is_better_metrics():
    delta = paired_bootstrap([0.1] * 20, [0.9] * 20, metric="over_refusal_rate", higher_is_better=False)
    assert delta.regression


def _evaluation(values):
    ev = ModelEvaluation()
    ev.scores["exact_match"] = [Score(f"k{i}", "fam" + str(i % 2), v) for i, v in enumerate(values)]
    ev.examples["reference"] = [{"key": f"k{i}", "category": "fam" + str(i % 2), "prompt": f"p{i}", "reference": "r", "output": "r" if v else "x"} for i, v in enumerate(values)]
    return ev


def test_compare_pairs_by_key_and_reports():
    base = _evaluation([1.0] * 40)
    cand = _evaluation([1.0, 0.0] * 20)  # fam1 collapses
    deltas = compare(base, cand, EvalParams(bootstrap_resamples=500))
    by = {(d.metric, d.category): d for d in deltas}
    assert by[("exact_match", "fam1")].regression and not by[("exact_match", "fam0")].regression
    worst = worst_regressions(base, cand)
    assert len(worst) == 5 and all(w["category"] == "fam1" for w in worst)
    policy = GateParams(min_improvement=0.0, max_family_regression=0.05, rules=[], min_improvement_over_base=None)
    decision = decide_promotion(base.summary(), cand.summary(), policy, [d.to_dict() for d in deltas]).to_dict()
    context = {"run_id": "r1", "model_name": "m", "baseline": {"source": "champion", "version": "3"}, "gate": decision}
    markdown = render_markdown(context, deltas, worst, verdict_cell=verdict_cell)
    assert "approved champion (version 3)" in markdown and "fam1" in markdown
    # The verdicts are the gate's own, with their bounds; the interval's reading is a column of its own.
    rows: dict[tuple[str, ...], str] = {}
    for line in markdown.splitlines():  # the first table a figure is in
        if line.startswith("| "):
            rows.setdefault(tuple(cell.strip() for cell in line.strip("|").split("|")[:2]), line)
    assert rows[("reference", "exact_match")].endswith("| significantly worse | FAIL (lower bound >= -0.100) |")
    assert rows[("exact_match", "fam1")].endswith("| significantly worse | FAIL (significant drop <= 0.050) |")
    assert rows[("exact_match", "fam0")].endswith("| no significant change | PASS (significant drop <= 0.050) |")
    assert "## Gate: FAILED" in markdown and all(f"- {reason}" in markdown for reason in decision["reasons"])
    assert "REGRESSION" not in markdown and "improved" not in markdown
    images = plots(deltas, [(1, 2.0), (2, 1.0)])
    assert set(images) == {"training_loss", "suites", "category_deltas"}
    page = render_html(markdown, images, "t")
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page


def test_demo_families_become_verifiable_prompts():
    records = [
        {"id": "a", "family": "lowercase", "messages": [{"role": "user", "content": "Say this in lowercase: The Dog"}, {"role": "assistant", "content": "the dog"}]},
        {"id": "b", "family": "compare", "messages": [{"role": "user", "content": "Is 3 bigger than 2?"}, {"role": "assistant", "content": "yes"}]},
    ]
    items = demo_ifeval_items(records)
    assert [i.instruction_ids for i in items] == [["change_case:english_lowercase"]]
