"""The ``retrain`` flow: validate -> tune -> evaluate vs baseline -> gate -> register.

With ``train.objective: dpo`` it tunes twice: SFT (or a registered version, ``preference.start_from``), then DPO
from it on validated preference pairs, its reference that model; the DPO model is gated against the champion,
the base model and its parent, and when refused the SFT parent is gated instead (one version at most).

Run: .venv/bin/tunegate run [--params params/demo.yaml] [--set section.key=value]
"""

from __future__ import annotations

from prefect import flow
from prefect.flow_runs import pause_flow_run
from prefect.states import Completed, State

from tasks.data import prepare_data, validate_data
from tasks.freshness import check_unchanged, skip_run
from tasks.evaluate import compare_models, compare_with_parent, evaluate, resolve_baseline, resolve_waiting, write_report
from tasks.preference import fallback_to_parent, prepare_preference, preference_outcome, resolve_parent, sft_parent, tune_preference, validate_preference_data
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
        preference = params.preference is not None  # train.objective dpo: SFT (or a registered version), then DPO
        pairs = prepare_preference(params, ctx) if preference else None
        freshness = check_unchanged(params, ctx, data, force, pairs)
        if freshness.skip:  # an unattended run whose inputs equal an existing model's
            return Completed(name="Nothing to do", message=freshness.reason, data=skip_run(params, ctx, data, freshness))
        data = validate_data(params, data, ctx)
        if preference:  # the pairs are validated before anything is tuned
            pairs = validate_preference_data(params, pairs, data, ctx)
        tuned = tune(params, data, ctx) if not preference or params.preference.starts_from_sft() else None
        if preference:
            parent = sft_parent(tuned) if tuned is not None else resolve_parent(params, ctx)
            sft, tuned = tuned, tune_preference(params, pairs, ctx, parent)  # the reference: the parent, frozen
        baseline = resolve_baseline(params, ctx)
        baseline_eval = evaluate(params, data, ctx, "baseline", baseline.model_dir, baseline.version)
        candidate_eval = evaluate(params, data, ctx, "candidate", tuned.model_dir)
        # Against a champion the base model is a second reference (the gate's over-base rule); usually read back.
        base_eval = evaluate(params, data, ctx, "base", None) if baseline.source == "champion" else None
        # A candidate waiting for review is a third reference (usually read back from the run that trained it).
        waiting = resolve_waiting(params, ctx, baseline)
        waiting_eval = evaluate(params, data, ctx, "waiting", waiting.model_dir, waiting.version) if waiting else None
        against_parent = parent_eval = None
        if preference:  # the preference-tuned model against the model it started from, on every suite
            parent_eval = baseline_eval if parent.version is not None and parent.version == baseline.version else \
                evaluate(params, data, ctx, "parent", parent.model_dir, parent.version)
            against_parent = compare_with_parent(params, ctx, parent, parent_eval, candidate_eval, tuned)
        comparison = compare_models(params, ctx, data, baseline, baseline_eval, candidate_eval, base_eval, waiting, waiting_eval, against_parent)
        decision = gate(params, comparison, ctx)  # the one decision: its action says what happens to the candidate
        chosen = None
        if preference:
            refused, fell_back = (comparison, decision), fallback_to_parent(params, parent, decision)
            if fell_back:  # the DPO model was refused: its SFT parent goes through the gate instead
                comparison = compare_models(params, ctx, data, baseline, baseline_eval, parent_eval, base_eval, waiting, waiting_eval)
                decision = gate(params, comparison, ctx)
            chosen = preference_outcome(params, ctx, parent, pairs, sft, tuned, refused, comparison, decision, fell_back)
        report = write_report(params, ctx, data, comparison, decision, chosen)  # the gate's verdicts beside the figures
        version = None
        match decision.action:
            case "register":
                model_uri, extra_tags = (chosen.model_uri, chosen.version_tags) if chosen else (tuned.model_uri, None)
                version = register_candidate(params, ctx, data, baseline, decision, model_uri, extra_tags)
            case "keep_waiting":  # passed, but the candidate waiting for review is better (gate.replace_waiting)
                keep_waiting(params, ctx, decision)
            case "reject":  # failed: the summary and the trail say why
                pass
        trained = sft if chosen is not None and chosen.stage == "sft" else tuned  # the model the summary is about
        summary = finish_run(params, ctx, data, baseline, comparison, trained, decision, version, report, chosen)
    if version and wait_for_approval:
        # A person answers in the Prefect UI (or resume_flow_run); the same promotion logic as the CLI runs.
        answer = pause_flow_run(wait_for_input=approval_form(summary), timeout=7 * 24 * 3600)
        summary = apply_review(params, ctx, version, answer, summary)
    return summary
