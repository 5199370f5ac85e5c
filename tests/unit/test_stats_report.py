"""Bootstrap intervals and the report, on hand-made scores."""

import pytest

from tunegate.eval_suites import ModelEvaluation, Score, compare, demo_ifeval_items, worst_regressions
from tunegate.params import EvalParams
from tunegate.report import plots, render_html, render_markdown
from tunegate.stats import paired_bootstrap


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
    context = {"run_id": "r1", "model_name": "m", "baseline": {"source": "champion", "version": "3"}}
    markdown = render_markdown(context, deltas, worst)
    assert "approved champion (version 3)" in markdown and "REGRESSION" in markdown and "fam1" in markdown
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
