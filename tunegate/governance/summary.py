"""The run summary: one JSON-able dict (the CLI's ``--json`` contract) and its markdown view."""

from __future__ import annotations

from typing import Any

from tunegate.evaluation.report import baseline_evaluation_note, baseline_label


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
) -> dict[str, Any]:
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
    summary: dict[str, Any], comparison: dict[str, Any], decision: dict[str, Any], *, report: str | None,
    required_low_above: float, trigger: str, timings: dict[str, float],
) -> dict[str, Any]:
    """The rest of a finished run's summary: the deltas and the report, the candidate against the base model
    on the primary metric (the gate's over-base rule, ``required_low_above``), the comparison with the
    candidate waiting for review, the outcome, the trigger and the stage timings."""
    summary["evaluation"] = {"deltas": comparison["deltas"], "report": report}
    summary["over_base"] = {
        "delta": comparison.get("over_base"),
        "evaluation": comparison.get("base_evaluation"),
        "required_low_above": required_low_above,
    }
    waiting = decision.get("waiting")
    if waiting:  # the comparison with the candidate waiting for review, always in the summary
        summary["waiting"] = {**waiting, "deltas": (comparison.get("waiting") or {}).get("deltas", []),
                              "evaluation": (comparison.get("waiting") or {}).get("evaluation")}
    if summary["registered_version"]:
        summary["outcome"] = "registered"
    elif decision["passed"] and waiting and not waiting["replace"]:
        summary["outcome"] = "waiting_better"  # passed the gate, but version N waiting for review is better
    else:
        summary["outcome"] = "gate_failed"
    summary["trigger"] = trigger
    summary["timings"] = timings
    return summary


def render_markdown(summary: dict[str, Any]) -> str:
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
    lines += [f"- {reason}" for reason in gate["reasons"]]
    lines.append("")
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


def render_nothing_to_do(summary: dict[str, Any]) -> str:
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
