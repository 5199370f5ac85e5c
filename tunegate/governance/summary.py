"""The run summary: one JSON-able dict (the CLI's ``--json`` contract) and its markdown view."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from tunegate.evaluation.report import baseline_evaluation_note, baseline_label

if TYPE_CHECKING:
    from tunegate.evaluation.comparison import Comparison
    from tunegate.governance.gate import GateDecision


class RunSummary(TypedDict, total=False):
    """The run summary: what ``tunegate run --json`` prints, ``summary/summary.json`` in MLflow holds and the
    flow returns. Its keys are a contract; the nested values are the JSON views of the stage values."""

    outcome: str  # "registered" | "gate_failed" | "waiting_better" | "nothing_to_do"
    reason: str  # nothing_to_do: why
    run_id: str
    prefect_flow_run_id: str | None
    model_name: str
    tracking_uri: str
    trigger: str
    commit: str
    code: str
    data_md5: str
    data: dict[str, Any]
    sources: dict[str, str]
    params_sha256: str
    matched: dict[str, Any] | None
    baseline: dict[str, Any]
    baseline_evaluation: dict[str, Any]
    candidate: dict[str, Any]
    train: dict[str, Any]
    gate: dict[str, Any] | None
    registered_version: str | None
    alias: str | None
    evaluation: dict[str, Any]
    over_base: dict[str, Any]
    waiting: dict[str, Any]
    timings: dict[str, float]
    review: dict[str, Any]
    preference: dict[str, Any]  # train.objective dpo: the preference stage (tasks.preference.preference_outcome)


def build_summary(
    *,
    run_id: str,
    flow_run_id: str | None,
    model_name: str,
    tracking_uri: str,
    commit: str,
    data: dict[str, Any],
    baseline: dict[str, Any],
    baseline_metrics: dict[str, Any],
    candidate_metrics: dict[str, Any],
    train: dict[str, Any],
    gate: dict[str, Any],
    registered_version: str | None,
    baseline_evaluation: dict[str, Any] | None = None,
) -> RunSummary:
    """``baseline_evaluation``: where the baseline's scores came from (``tunegate.evaluation.cache``)."""
    return {
        "run_id": run_id,
        "prefect_flow_run_id": flow_run_id,
        "model_name": model_name,
        "tracking_uri": tracking_uri,
        "commit": commit,
        "data_md5": data["data_md5"],
        "data": data,
        "baseline": {
            "source": baseline["source"],
            "version": baseline.get("version"),
            "metrics": baseline_metrics,
        },
        # {"reused": true, "from_run": ..., "key": ...} or {"reused": false, "key": ..., "reason": ...}
        "baseline_evaluation": baseline_evaluation or {"reused": False},
        "candidate": {"metrics": candidate_metrics},
        "train": train,
        "gate": {"passed": gate["passed"], "reasons": gate["reasons"]},
        "registered_version": registered_version,
        "alias": "candidate" if registered_version else None,
        # "registered", "gate_failed" (the gate refused the candidate); a skipped run's summary says
        # "nothing_to_do" and `tunegate run --json` prints {"outcome": "failed", "error": ...} on failure.
        "outcome": "registered" if registered_version else "gate_failed",
    }


def complete_summary(
    summary: RunSummary, comparison: Comparison, decision: GateDecision, *, report: str | None,
    required_low_above: float, trigger: str, timings: dict[str, float],
) -> RunSummary:
    """The rest of a finished run's summary: the deltas and the report, the candidate against the base model
    on the primary metric (the gate's over-base rule, ``required_low_above``), the comparison with the
    candidate waiting for review, the outcome (from the decision's action), the trigger and the stage timings."""
    summary["evaluation"] = {"deltas": [d.to_dict() for d in comparison.deltas], "report": report}
    summary["over_base"] = {
        "delta": comparison.over_base.to_dict() if comparison.over_base else None,
        "evaluation": comparison.base_evaluation,
        "required_low_above": required_low_above,
    }
    if decision.waiting is not None:  # the comparison with the candidate waiting for review, always in the summary
        summary["waiting"] = {**decision.waiting.to_dict(),
                              "deltas": [d.to_dict() for d in comparison.waiting.deltas] if comparison.waiting else [],
                              "evaluation": comparison.waiting.evaluation if comparison.waiting else None}
    if summary["registered_version"]:
        summary["outcome"] = "registered"
    elif decision.action == "keep_waiting":
        summary["outcome"] = "waiting_better"  # passed the gate, but version N waiting for review is better
    else:
        summary["outcome"] = "gate_failed"
    summary["trigger"] = trigger
    summary["timings"] = timings
    return summary


def render_markdown(summary: RunSummary) -> str:
    if summary.get("outcome") == "nothing_to_do":
        return render_nothing_to_do(summary)
    base = summary["baseline"]["metrics"]
    cand = summary["candidate"]["metrics"]
    lines = [
        f"# tunegate run `{summary['run_id']}`",
        "",
        f"- model: `{summary['model_name']}`  ",
        f"- data md5: `{summary['data_md5']}` ({summary['data']['n_train']} train / {summary['data']['n_eval']} eval records)",
        f"- commit: `{summary['commit']}`",
        f"- baseline: {baseline_label(summary['baseline'])}",
        *(
            [f"- baseline evaluation: {baseline_evaluation_note(summary['baseline_evaluation']) or 'computed in this run'}"]
            if "baseline_evaluation" in summary else []
        ),
        "",
        "| metric | baseline | candidate | delta |",
        "|---|---:|---:|---:|",
        f"| exact match | {base['exact_match']:.3f} | {cand['exact_match']:.3f} | {cand['exact_match'] - base['exact_match']:+.3f} |",
        f"| response loss | {base['response_loss']:.3f} | {cand['response_loss']:.3f} | {cand['response_loss'] - base['response_loss']:+.3f} |",
    ]
    for family in sorted(set(base["per_family"]) | set(cand["per_family"])):
        b = base["per_family"].get(family, 0.0)
        c = cand["per_family"].get(family, 0.0)
        lines.append(f"| exact match: {family} | {b:.3f} | {c:.3f} | {c - b:+.3f} |")
    gate = summary["gate"]
    lines += ["", f"## Gate: {'PASSED' if gate['passed'] else 'FAILED'}", ""]
    if summary.get("minimums"):  # absolute thresholds (governance.minimums): stated whether or not the gate passed
        from tunegate.governance.minimums import minimum_line

        lines += [f"- minimum: {minimum_line(entry)}" for entry in summary["minimums"]]
        lines.append("")
    lines += [f"- {reason}" for reason in gate["reasons"]]
    lines.append("")
    preference = summary.get("preference")
    if preference:  # a run that tuned twice: which model this summary is about, and why
        parent = preference["parent"]
        held = ((preference.get("comparisons") or {}).get("parent") or {}).get("held_out") or {}
        lines += [f"## Preference stage ({preference['objective']})", "",
                  f"- parent and reference: {parent['label']} (frozen)",
                  *([f"- held-out pairs: implicit-reward accuracy {held['accuracy']:.3f} [{held['low']:.3f}, {held['high']:.3f}] "
                     f"over {held['pairs']}"] if held.get("accuracy") is not None else []),
                  f"- DPO model's gate: {'PASSED' if preference['gate']['passed'] else 'FAILED'}",
                  *[f"  - {reason}" for reason in preference["gate"]["reasons"] if reason.startswith("FAIL")],
                  f"- {preference['why']}", ""]
    waiting = summary.get("waiting")
    if waiting:
        lines += [f"## Against version {waiting['version']}, waiting for review", ""]
        lines += [f"- {reason}" for reason in waiting["reasons"]]
        lines.append("")
    if summary["registered_version"]:
        replaced = f" (it replaces version {waiting['version']}, which waited for review)" if waiting else ""
        lines.append(
            f"Registered as version **{summary['registered_version']}** with alias `candidate`{replaced}; "
            f"approve with `tunegate approve {summary['registered_version']} --reviewer NAME --reason TEXT`."
        )
    elif summary.get("outcome") == "waiting_better":
        worse = [r.removeprefix("FAIL ") for r in waiting["reasons"] if r.startswith("FAIL")]
        lines.append(f"Not registered: version {waiting['version']}, waiting, is better ({'; '.join(worse)}).")
    else:
        lines.append("Nothing was registered.")
    return "\n".join(lines) + "\n"


def render_nothing_to_do(summary: RunSummary) -> str:
    """The summary of a run that ended early because its inputs equal an existing model's."""
    matched = summary["matched"]
    lines = [
        f"# tunegate run `{summary['run_id']}`: nothing to do",
        "",
        summary["reason"],
        "",
        f"- model: `{summary['model_name']}`",
        f"- started by: {summary['trigger']}",
        f"- data md5: `{summary['data_md5']}`",
        f"- params sha256: `{summary['params_sha256'][:16]}`",
        f"- code: `{summary['code']}`",
        f"- same inputs as {matched['role']} version {matched['version']} (MLflow run `{matched['run_id']}`)",
        "",
        "Start a run anyway with `tunegate trigger --force` (or `tunegate run`).",
    ]
    return "\n".join(lines) + "\n"
