"""The ``retrain`` flow: validate -> tune -> evaluate vs baseline -> gate -> register.

Run: .venv/bin/tunegate run [--params params/demo.yaml] [--set section.key=value]
"""

from __future__ import annotations

from prefect import flow
from prefect.flow_runs import pause_flow_run
from prefect.states import Completed, State

from tasks.data import prepare_data, validate_data
from tasks.freshness import check_unchanged, skip_run
from tasks.evaluate import compare_models, evaluate, resolve_baseline, resolve_waiting, write_report
from tasks.queue import run_slot
from tasks.promote import apply_review, approval_form, check_champion, gate, keep_waiting, register_candidate
from tasks.tracking import finish_run, load_run_params, record_failure, start_run
from tasks.train import tune
from tunegate.governance.summary import RunSummary
from tunegate.operations.launcher import Launch


@flow(name="retrain", on_failure=[record_failure])
def retrain(
    params_file: str = "params/demo.yaml",
    overrides: list[str] | None = None,
    resume_run_id: str | None = None,
    wait_for_approval: bool = False,
    trigger: str = "manual",
    force: bool = False,
    accept_unaudited_champion: bool = False,
    launch: Launch | None = None,
) -> RunSummary | State:
    """``trigger``: who started the run ("manual", "schedule", "data:..."); unattended runs whose
    inputs equal the champion's or a waiting candidate's end as "nothing to do" unless ``force``.
    A champion alias moved outside tunegate stops the run before anything is done unless
    ``accept_unaudited_champion`` (audited). ``launch``: the params ``tunegate run`` loaded, validated and
    preflighted, handed on as a value; a served or scheduled run has none, and its first task loads them."""
    params = load_run_params(params_file, overrides or [], launch)
    ctx = start_run(params, params_file, resume_run_id, trigger)
    check_champion(params, ctx, accept_unaudited_champion)
    # One run of this model at a time from data to registration: a second one waits here (tasks.queue).
    with run_slot(params, ctx):
        data = prepare_data(params, ctx)
        freshness = check_unchanged(params, ctx, data, force)
        if freshness.skip:  # an unattended run whose inputs equal an existing model's
            return Completed(name="Nothing to do", message=freshness.reason, data=skip_run(params, ctx, data, freshness))
        data = validate_data(params, data, ctx)
        tuned = tune(params, data, ctx)
        baseline = resolve_baseline(params, ctx)
        baseline_eval = evaluate(params, data, ctx, "baseline", baseline.model_dir, baseline.version)
        candidate_eval = evaluate(params, data, ctx, "candidate", tuned.model_dir)
        # Against a champion the base model is a second reference (the gate's over-base rule); usually read back.
        base_eval = evaluate(params, data, ctx, "base", None) if baseline.source == "champion" else None
        # A candidate waiting for review is a third reference (usually read back from the run that trained it).
        waiting = resolve_waiting(params, ctx, baseline)
        waiting_eval = evaluate(params, data, ctx, "waiting", waiting.model_dir, waiting.version) if waiting else None
        comparison = compare_models(params, ctx, data, baseline, baseline_eval, candidate_eval, base_eval, waiting, waiting_eval)
        decision = gate(params, comparison, ctx)  # the one decision: its action says what happens to the candidate
        report = write_report(params, ctx, data, comparison, decision)  # the gate's verdicts beside the figures
        version = None
        match decision.action:
            case "register":
                version = register_candidate(params, ctx, data, baseline, decision, tuned.model_uri)
            case "keep_waiting":  # passed, but the candidate waiting for review is better (gate.replace_waiting)
                keep_waiting(params, ctx, decision)
            case "reject":  # failed: the summary and the trail say why
                pass
        summary = finish_run(params, ctx, data, baseline, comparison, tuned, decision, version, report)
    if version and wait_for_approval:
        # A person answers in the Prefect UI (or resume_flow_run); the same promotion logic as the CLI runs.
        answer = pause_flow_run(wait_for_input=approval_form(summary), timeout=7 * 24 * 3600)
        summary = apply_review(params, ctx, version, answer, summary)
    return summary
