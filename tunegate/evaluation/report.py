"""The evaluation report: markdown, and a self-contained HTML page with plots (PNG inlined)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping
from typing import Any

from tunegate.evaluation.stats import Delta, percent
from tunegate.evaluation.suites import REGISTRY


def baseline_label(baseline: dict[str, Any]) -> str:
    """Which baseline a run was compared with, in words (summary, report and model card)."""
    if baseline.get("source") == "champion":
        return f"the approved champion (version {baseline.get('version')})"
    return "the base model (no champion yet)"


def baseline_evaluation_note(provenance: dict[str, Any] | None) -> str | None:
    """The words "reused from run `X` (same model, eval data, suites, code)" when the baseline's
    evaluation was read back from an earlier run, else None (summary and report)."""
    if not provenance or not provenance.get("reused"):
        return None
    return f"reused from run `{provenance.get('from_run')}` (same model, eval data, suites, code)"


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def change(delta: Delta) -> str:
    """What the interval says, in words (not a verdict: the gate column holds the gate's)."""
    if delta.regression:
        return "significantly worse"
    if delta.improvement:
        return "significantly better"
    return "no significant change"


def interval_cell(delta: Delta) -> str:
    """A figure's interval as the tables show it; a category's with its simultaneous interval over the
    metric's categories (the one the gate's family rule judges) beside it."""
    cell = f"[{delta.low:+.3f}, {delta.high:+.3f}]"
    if delta.adjusted_regression is None or delta.adjusted_confidence is None:
        return cell
    return f"{cell}; simultaneous {percent(delta.adjusted_confidence)}: [{delta.adjusted_low:+.3f}, {delta.adjusted_high:+.3f}]"


def overall(deltas: list[Delta]) -> list[Delta]:
    return [d for d in deltas if d.category == "all"]


def truncation_note(truncated_prompts: Mapping[str, int] | None) -> list[str]:
    """A warning paragraph when eval prompts were longer than the model's context (role -> count)."""
    cut = {role: n for role, n in (truncated_prompts or {}).items() if n > 0}
    if not cut:
        return []
    counts = ", ".join(f"{role} {n}" for role, n in cut.items())
    return [
        f"**Truncated prompts:** {counts} eval prompt(s) were longer than the model's context allows "
        "(after room for the answer) and lost their beginning; their scores say little about the model.",
        "",
    ]


def reuse_note(provenance: Mapping[str, Any] | None) -> list[str]:
    """A paragraph when the baseline's scores were read back from an earlier run, not recomputed."""
    note = baseline_evaluation_note(dict(provenance) if provenance else None)
    return [f"Baseline evaluation {note}.", ""] if note else []


def over_base_note(context: Mapping[str, Any]) -> list[str]:
    """The candidate against the base model on the primary metric (the gate's over-base rule), when the
    baseline is a champion: the table below compares with the champion only."""
    d = context.get("over_base")
    if not d or context["baseline"].get("source") == "base_model":
        return []
    return [
        f"**Against the base model:** {d['metric']} {_fmt(d['baseline'])} -> {_fmt(d['candidate'])} "
        f"(delta {d['delta']:+.3f}, interval [{d['low']:+.3f}, {d['high']:+.3f}]).",
        "",
    ]


def report_rows(deltas: list[Delta]) -> list[Delta]:
    """The overall deltas the report's table shows: each registered suite's report rows, in the order
    compared; a metric no registered suite computes (a stored evaluation's) too, its suite unknown."""
    shown = {row for suite in REGISTRY.suites() for row in suite.rows()}
    return [d for d in overall(deltas) if d.metric in shown or REGISTRY.suite_of(d.metric) is None]


def _metric_flag(metric: str, flag: str, default: bool) -> bool:
    found = REGISTRY.metric(metric)
    return getattr(found, flag) if found is not None else default


# The gate's outcome for one figure as a table cell (tunegate.governance.gate.verdict_cell): checks, metric, category.
VerdictCell = Callable[[list[dict[str, Any]], str, str], str]


def render_markdown(
    context: dict[str, Any], deltas: list[Delta], worst: list[dict[str, Any]],
    truncated_prompts: Mapping[str, int] | None = None, *, verdict_cell: VerdictCell,
) -> str:
    """The evaluation report; ``truncated_prompts`` (e.g. {"baseline": 0, "candidate": 3}, from
    ``ModelEvaluation.truncated_prompts``) adds a warning when any count is above zero;
    ``context["baseline_evaluation"]`` (``EvaluationOutcome.provenance()``) a note when the
    baseline's evaluation was reused; ``context["gate"]`` (the gate's decision, ``GateDecision.to_dict()``
    plus its ``waiting`` part) the verdict beside each figure, as the gate's ``verdict_cell`` words it, and
    the gate's reasons, word for word."""
    decision = context.get("gate") or {"passed": None, "reasons": [], "checks": []}
    checks = decision.get("checks", [])
    lines = [
        f"# Evaluation: candidate vs {baseline_label(context['baseline'])}",
        "",
        f"Run `{context['run_id']}` · model `{context['model_name']}` · eval set md5 `{context.get('eval_md5', '?')}`",
        "",
        f"Paired bootstrap {int(context.get('confidence', 0.95) * 100)}% intervals over examples; a change is "
        "significant only when its interval excludes zero. A category's row adds its simultaneous interval over "
        "all the metric's categories (Bonferroni, expanded for small samples), on which the gate judges a "
        "family's drop. The gate column is the gate's own outcome for the "
        "figure (PASS / FAIL, with the rule's bound), or \"not gated\" where no rule judges it."
        + "".join(f" {suite.report_note}" for suite in REGISTRY.suites() if suite.report_note),
        "",
        *reuse_note(context.get("baseline_evaluation")),
        *over_base_note(context),
        *truncation_note(truncated_prompts),
        "| suite | metric | baseline | candidate | delta | interval | change | gate |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for d in report_rows(deltas):
        suite = REGISTRY.suite_of(d.metric)
        lines.append(
            f"| {suite.name if suite else '?'} | {d.metric}{'' if d.higher_is_better else ' (lower is better)'} | {_fmt(d.baseline)} | "
            f"{_fmt(d.candidate)} | {d.delta:+.3f} | [{d.low:+.3f}, {d.high:+.3f}] | {change(d)} | {verdict_cell(checks, d.metric, 'all')} |"
        )
    verdicts = {(d.metric, d.category): verdict_cell(checks, d.metric, d.category) for d in deltas if d.category != "all"}
    gated_categories = [d for d in deltas if verdicts.get((d.metric, d.category), "not gated") != "not gated"]
    if gated_categories:
        lines += ["", "| metric | category | baseline | candidate | delta | interval | change | gate |", "|---|---|---:|---:|---:|---|---|---|"]
        lines += [
            f"| {d.metric} | {d.category} | {_fmt(d.baseline)} | {_fmt(d.candidate)} | {d.delta:+.3f} | {interval_cell(d)} | "
            f"{change(d)} | {verdicts[(d.metric, d.category)]} |"
            for d in gated_categories
        ]
    if decision.get("passed") is not None:
        lines += ["", f"## Gate: {'PASSED' if decision['passed'] else 'FAILED'}", ""]
        lines += [f"- {reason}" for reason in decision["reasons"]]
    waiting = context.get("waiting")
    if waiting:
        vs = decision.get("waiting") or {}
        lines += ["", f"## Against version {waiting['version']}, waiting for review", ""]
        if vs:
            lines += [f"Policy `replace_waiting: {vs['policy']}`: the new candidate "
                      + ("replaces it." if vs["replace"] else "does not replace it: the waiting version is better."), ""]
        lines += ["| metric | waiting | new | delta | interval | change | gate |", "|---|---:|---:|---:|---|---|---|"]
        lines += [
            f"| {d['metric']} | {_fmt(d['baseline'])} | {_fmt(d['candidate'])} | {d['delta']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] | "
            f"{change(Delta.from_dict(d))} | {verdict_cell(vs.get('checks', []), d['metric'], d['category'])} |"
            for d in waiting["deltas"]
        ]
        if vs:
            lines += [""] + [f"- {reason}" for reason in vs["reasons"]]
    lines += judge_section(context.get("judge"), context.get("judge_summary"), checks, verdict_cell)
    lines += preference_section(context.get("preference"), verdict_cell)
    flagged = [d for d in deltas if d.category != "all" and d.regression]
    lines += ["", "## Significantly worse by category", ""]
    if flagged:
        lines += ["| metric | category | baseline | candidate | delta | interval | gate |", "|---|---|---:|---:|---:|---|---|"]
        lines += [
            f"| {d.metric} | {d.category} | {_fmt(d.baseline)} | {_fmt(d.candidate)} | {d.delta:+.3f} | {interval_cell(d)} | "
            f"{verdicts[(d.metric, d.category)]} |"
            for d in flagged
        ]
    else:
        lines.append("None: no category's interval lies on the wrong side of zero.")
    lines += ["", "## Worst regressions (reference tasks)", ""]
    if worst:
        for w in worst:
            lines += [
                f"- **{w['category']}** `{w['key']}`: {w['prompt']!r}",
                f"  - reference: {w['reference']!r}",
                f"  - baseline: {w['baseline_output']!r}",
                f"  - candidate: {w['candidate_output']!r}",
            ]
    else:
        lines.append("None: the candidate answers every example the baseline answered exactly.")
    return "\n".join(lines) + "\n"


def preference_section(preference: Mapping[str, Any] | None, verdict_cell: VerdictCell) -> list[str]:
    """A preference run's stage: what it started from (the parent, its DPO reference), the held-out pairs, the
    DPO model against its parent on every suite with the gate's verdicts, and which model the run went on with."""
    if not preference:
        return []
    parent, reference = preference["parent"], preference["reference"]
    dpo_gate = preference["gate"]
    checks = dpo_gate.get("checks", [])
    check = reference.get("check") or {}
    lines = ["", f"## Preference stage ({preference['objective']})", "",
             f"- parent (where DPO started): {parent['label']}" + (f", `{parent['model_uri']}`" if parent.get("model_uri") else ""),
             f"- reference: the parent, frozen"
             + (f" (checked before the first step: log-probabilities equal within {check['max_abs_logp_difference']:.2g} "
                f"on {check['pairs']} pairs)" if check else ""),
             f"- preference pairs: {preference['data']['n_train']} train, {preference['data']['n_eval']} held out "
             f"(md5 `{preference['data']['train_md5']}`, `{preference['data']['eval_md5']}`)",
             f"- DPO: {preference['dpo']['steps']} steps, beta {preference['dpo']['beta']}, {preference['dpo']['loss_type']} loss, "
             f"final loss {preference['dpo']['final_loss']:.4f}",
             f"- outcome: {preference['why']}", ""]
    against = (preference.get("comparisons") or {}).get("parent")
    if against:
        held = against.get("held_out") or {}
        if held.get("accuracy") is not None:
            lines += [f"Held-out pairs: the DPO model's implicit reward prefers the chosen answer in **{held['accuracy']:.3f}** of "
                      f"{held['pairs']} (interval [{held['low']:.3f}, {held['high']:.3f}] about parity 0.5); the chosen answer has the "
                      f"higher log-probability in {held['parent_prefers_chosen']:.3f} of them under the parent and "
                      f"{held['candidate_prefers_chosen']:.3f} under the DPO model.", ""]
        lines += ["| metric | parent | DPO model | delta | interval | change | gate |", "|---|---:|---:|---:|---|---|---|"]
        lines += [
            f"| {d['metric']} | {_fmt(d['baseline'])} | {_fmt(d['candidate'])} | {d['delta']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] | "
            f"{change(Delta.from_dict(d))} | {verdict_cell(checks, d['metric'], 'all')} |"
            for d in against["deltas"] if d["category"] == "all"
        ]
    lines += ["", f"DPO model's gate: {'PASSED' if dpo_gate['passed'] else 'FAILED'}", ""]
    lines += [f"- {reason}" for reason in dpo_gate["reasons"]]
    return lines


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def judge_examples(pairs: list[dict[str, Any]], seed: int = 0, sample: int = 3, worst: int = 3) -> list[dict[str, Any]]:
    """The pairs the report shows side by side: a seeded sample, then the candidate's losses (both orders
    preferred the reference), each once."""
    import random

    judged = [p for p in pairs if p["outcome"] != "failed"]
    chosen = random.Random(seed).sample(judged, min(sample, len(judged)))
    chosen += [p for p in judged if p["outcome"] == "loss" and p not in chosen][:worst]
    return chosen


def judge_section(judge: Mapping[str, Any] | None, summary: Mapping[str, Any] | None, checks: list[dict[str, Any]],
                  verdict_cell: VerdictCell) -> list[str]:
    """The pairwise judge: who judged and how, the win rate with its interval and the gate's cell, the counts,
    the answers' length difference, and a few pairs side by side with both orders' verdicts."""
    if not judge or not summary:
        return []
    who = judge["judge"]
    name = who.get("model") or who.get("path")
    lines = ["", "## Judge: candidate vs baseline, pairwise", "",
             f"Judge `{who.get('kind')}` `{name}`" + (f" at `{who['base_url']}`" if who.get("base_url") else "")
             + f"; prompt sha256 `{judge['prompt_sha256'][:16]}`; decoding {judge['decoding']}; {judge['requests']} request(s).", ""]
    if summary.get("failed"):
        lines += [f"**The judge suite failed:** {summary['failed']}", ""]
    else:
        counts = summary["counts"]
        lines += [
            "| win rate | interval | pairs | won | tied | of them inconsistent | lost | no verdict | length difference (chars) | gate |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {summary['win_rate']:.3f} | [{summary['low']:.3f}, {summary['high']:.3f}] | {summary['n']} | {counts['win']} | "
            f"{counts['tie']} | {counts['inconsistent']} | {counts['loss']} | {counts['failed']} | "
            f"{summary['length_difference_chars']:+.0f} | {verdict_cell(checks, 'judge_win_rate', 'all')} |", "",
        ]
    for pair in judge_examples(judge["pairs"]):
        lines += [f"- **{pair['category']}** `{pair['key']}` ({pair['outcome']}; verdicts {pair['verdict_ab']} with the baseline "
                  f"first, {pair['verdict_ba']} with the candidate first): {_short(pair['prompt'], 200)!r}",
                  f"  - baseline: {_short(pair['reference'])!r}", f"  - candidate: {_short(pair['candidate'])!r}"]
    return lines


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plots(deltas: list[Delta], loss_history: list[tuple[int, float]]) -> dict[str, str]:
    """name -> base64 PNG: training loss, baseline vs candidate per suite, category deltas with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = {}
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    if loss_history:
        steps, losses = zip(*loss_history)
        ax.plot(steps, losses, color="#3366cc")
    ax.set_title("Training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    images["training_loss"] = _png(fig)

    main = [d for d in overall(deltas) if _metric_flag(d.metric, "unit_interval", True)]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = range(len(main))
    ax.bar([i - 0.2 for i in x], [d.baseline for d in main], width=0.4, label="baseline", color="#999999")
    ax.bar([i + 0.2 for i in x], [d.candidate for d in main], width=0.4, label="candidate", color="#3366cc")
    ax.set_xticks(list(x))
    ax.set_xticklabels([d.metric for d in main], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("Baseline vs candidate, every suite")
    ax.legend()
    images["suites"] = _png(fig)

    per_category = [d for d in deltas if d.category != "all" and _metric_flag(d.metric, "plot_categories", False)]
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.28 * len(per_category) + 1)))
    labels = [f"{d.metric}: {d.category}" for d in per_category]
    y = range(len(per_category))
    colors = ["#cc3333" if d.regression else ("#33aa55" if d.improvement else "#777777") for d in per_category]
    for position, d, color in zip(y, per_category, colors):
        ax.errorbar([d.delta], [position], xerr=[[d.delta - d.low], [d.high - d.delta]], fmt="none", ecolor=color, capsize=3)
    ax.scatter([d.delta for d in per_category], list(y), c=colors, zorder=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_title("Per-category delta (candidate - baseline) with intervals; red: significantly worse")
    images["category_deltas"] = _png(fig)
    return images


def render_html(markdown_text: str, images: dict[str, str], title: str) -> str:
    """A self-contained page: the plots inline as data URIs, then the markdown report as preformatted text
    and tables converted by the ``markdown`` package."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])
    figures = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"/>'
        f"<figcaption>{html.escape(name.replace('_', ' '))}</figcaption></figure>"
        for name, data in images.items()
    )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}"
        "figure{display:inline-block;margin:0.5em}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><p><small>{html.escape(title)}</small></p>"
        f"{body}<h2>Plots</h2><section class='plots'>{figures}</section>"
        # Marks the page once every plot has decoded, so a headless browser test can tell.
        "<script>window.addEventListener('load',()=>{document.body.dataset.plotsRendered="
        "[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length})</script></body></html>"
    )
