"""Preference stage (train.objective: dpo): the pairs read, versioned and validated like the instruction data,
the starting model (the parent) resolved, and DPO from it with the parent as the frozen reference."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from tasks.common import RETRY_TRANSIENT, DataRef, RunContext, timed
from tasks.queue import compute_slot
from tasks.train import TunedModel
from tunegate import tags
from tunegate.adapters import mlflow as tracking
from tunegate.data.sources import read_canonical, write_split
from tunegate.data.validation import DataError, error_message, save_report
from tunegate.governance.trail import record
from tunegate.operations import timings
from tunegate.params import Params
from tunegate.tuning.modeling import read_model_info
from tunegate.tuning.training import latest_checkpoint, step_metrics, train_model

PREFERENCE_ARTIFACT = "preference/tunegate_model"  # the DPO model's directory in the run's artifacts


@dataclass(frozen=True)
class PreferenceRef:
    train_path: str
    eval_path: str
    n_train: int
    n_eval: int
    train_md5: str
    eval_md5: str
    sources: dict[str, str] = field(default_factory=dict)  # source name -> md5 of its file


class ParentRecord(TypedDict):
    """A :class:`ParentRef` as the summary, lineage and audit entries write it."""

    kind: str
    version: str | None
    run_id: str | None
    model_uri: str
    start_from: str
    label: str


@dataclass(frozen=True)
class ParentRef:
    """The model the preference stage starts from and keeps as its frozen reference: this run's SFT model
    (``kind`` "sft") or a registered version (``kind`` "version")."""

    kind: str
    model_dir: str
    model_uri: str
    version: str | None = None
    run_id: str | None = None  # the run that trained it
    start_from: str = "sft"  # what params asked for

    def label(self) -> str:
        return "this run's SFT model" if self.kind == "sft" else f"version {self.version}"

    def tag(self) -> str:
        return "sft" if self.kind == "sft" else f"version:{self.version}"

    def to_dict(self) -> ParentRecord:
        return {"kind": self.kind, "version": self.version, "run_id": self.run_id, "model_uri": self.model_uri,
                "start_from": self.start_from, "label": self.label()}


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("preference_data")
def prepare_preference(params: Params, ctx: RunContext) -> PreferenceRef:
    """Read every preference source into canonical pair records, split off the held-out pairs, log md5s."""
    from tunegate.data.preference import build_preference_dataset

    logger = get_run_logger()
    dataset = build_preference_dataset(params)
    train_path, eval_path, train_md5, eval_md5 = write_split(Path(ctx.work_dir) / "preference_data", dataset.train, dataset.eval)
    sources = dataset.source_md5s()
    tracking.set_tags(ctx.run_id, {tags.PREFERENCE_TRAIN_MD5: train_md5, tags.PREFERENCE_EVAL_MD5: eval_md5,
                                   **{f"{tags.PREFERENCE_SOURCE_MD5_PREFIX}{k}": v for k, v in sources.items()}})
    tracking.log_dict(ctx.run_id, {"train_md5": train_md5, "eval_md5": eval_md5, "sources": dataset.source_summary()},
                      "preference_data/sources.json")
    tracking.log_dataset(ctx.run_id, dataset.train, "preference_train", str(train_path), train_md5, "training")
    tracking.log_dataset(ctx.run_id, dataset.eval, "preference_eval", str(eval_path), eval_md5, "evaluation")
    record("preference_data_versioned", {"run_id": ctx.run_id, "train_md5": train_md5, "eval_md5": eval_md5, "sources": sources},
           model_name=params.model.registered_name, commit=ctx.commit)
    logger.info("preference data md5 %s: %d train, %d held-out pairs from %d source(s)", train_md5, len(dataset.train),
                len(dataset.eval), len(sources))
    return PreferenceRef(str(train_path), str(eval_path), len(dataset.train), len(dataset.eval), train_md5, eval_md5, sources)


@task(cache_policy=NONE, **RETRY_TRANSIENT)
@timed("preference_validation")
def validate_preference_data(params: Params, pref: PreferenceRef, data: DataRef, ctx: RunContext) -> PreferenceRef:
    """The preference rules (Great Expectations, the same report as the instruction data's): an error rule stops
    the run before anything is tuned, 'drop' rules filter, warnings (length bias) are logged and reported."""
    from tunegate.data.preference_validation import eval_preference_validation, validate_preference

    logger = get_run_logger()
    train, held_out = read_canonical(Path(pref.train_path)), read_canonical(Path(pref.eval_path))
    sft_eval = read_canonical(Path(data.eval_path))
    out_dir = Path(ctx.work_dir) / "validation_preference"
    rules = params.preference.validation
    train_report = validate_preference(rules, train, held_out, sft_eval, out_dir / "data_docs", split="preference_train")
    eval_report = validate_preference(eval_preference_validation(rules), held_out, None, sft_eval, out_dir / "data_docs",
                                      split="preference_eval") if held_out else None
    reports = [r for r in (train_report, eval_report) if r is not None]
    markdown_path, _ = save_report(reports, out_dir)
    tracking.log_artifacts(ctx.run_id, out_dir, "validation/preference")
    create_markdown_artifact(key="preference-validation-report", markdown=markdown_path.read_text(),
                             description="Great Expectations results: preference pairs")
    passed = all(r.passed for r in reports)
    record("preference_validation", {"run_id": ctx.run_id, "passed": passed,
                                     "failed_rules": [r.rule for rep in reports for r in rep.failures()]},
           model_name=params.model.registered_name, commit=ctx.commit)
    if not passed:
        raise DataError(error_message(reports))
    for split, warning in [(rep.split, w) for rep in reports for w in rep.warnings()]:
        logger.warning("preference validation (%s): %s", split, warning.describe())
    dropped = set(train_report.dropped_ids) | set(eval_report.dropped_ids if eval_report else [])
    if dropped:
        train = [r for r in train if r["id"] not in dropped]
        held_out = [r for r in held_out if r["id"] not in dropped]
        _, _, train_md5, eval_md5 = write_split(Path(pref.train_path).parent, train, held_out)  # prepare_preference's files
        logger.info("dropped %d preference pairs by policy", len(dropped))
        pref = replace(pref, n_train=len(train), n_eval=len(held_out), train_md5=train_md5, eval_md5=eval_md5)
    logger.info("preference validation passed: %d train, %d held-out pairs", len(train), len(held_out))
    return pref


@task(cache_policy=NONE, **RETRY_TRANSIENT)
def sft_parent(tuned: TunedModel) -> ParentRef:
    """This run's SFT model as the preference stage's parent."""
    return ParentRef("sft", tuned.model_dir, tuned.model_uri, None, None, "sft")


@task(cache_policy=NONE, **RETRY_TRANSIENT)
def resolve_parent(params: Params, ctx: RunContext) -> ParentRef:
    """The registered version ``preference.start_from`` names (an alias such as champion, a version number, or
    ``models:/<name>@<alias>``), downloaded: a preference-only run from an approved SFT model."""
    start = params.preference.start_from
    name = params.model.registered_name
    if start.startswith("models:/"):
        path = start[len("models:/"):]
        name, sep, alias = path.partition("@")
        if not sep:
            name, _, version = path.partition("/")
            ref = tracking.get_version(name, version)
        else:
            ref = tracking.alias_version(name, alias)
    elif start.isdigit():
        ref = tracking.get_version(name, start)
    else:
        ref = tracking.alias_version(name, start)
    if ref is None:
        raise ValueError(f"preference.start_from {start!r}: registered model {name!r} has no such alias; "
                         "register and approve an SFT model first, or start_from: sft")
    local = tracking.download_version(ref, Path(ctx.work_dir) / "parent")
    get_run_logger().info("preference stage starts from %s version %s (its reference, frozen)", name, ref.version)
    return ParentRef("version", str(local), f"models:/{name}/{ref.version}", ref.version, ref.run_id, start)


@task(cache_policy=NONE, timeout_seconds=6 * 3600, **RETRY_TRANSIENT)
@timed("preference_tuning")
def tune_preference(params: Params, pref: PreferenceRef, ctx: RunContext, parent: ParentRef) -> TunedModel:
    """DPO from the parent, its reference the parent frozen (checked before the first step); every step
    (``dpo_loss``, ``dpo_rewards/margins``, ...) and checkpoint logged; the held-out pairs' margins kept."""
    logger = get_run_logger()
    pairs, held_out = read_canonical(Path(pref.train_path)), read_canonical(Path(pref.eval_path))
    work = Path(ctx.work_dir) / "preference"
    logger.info("preference tuning (%s, beta %s, %s loss) from %s on %d pairs", params.train.objective,
                params.preference.train.beta, params.preference.train.loss_type, parent.label(), len(pairs))

    def log_checkpoint(path: Path) -> None:
        tracking.log_artifacts(ctx.run_id, path, "preference/checkpoints/latest")

    earlier = latest_checkpoint(work / "checkpoints")
    if earlier is not None:
        logger.info("resuming preference tuning from step %s (checkpoint %s)", earlier.name.split("-")[-1], earlier)
    with compute_slot(params, ctx, "preference tuning") as waited:
        timings.waited("preference_tuning", waited)
        result = train_model(params, pairs, work, log_checkpoint=log_checkpoint, log_line=logger.info, start_from=Path(parent.model_dir),
                             eval_records=held_out,
                             log_step=lambda step, values: tracking.log_metrics(ctx.run_id, step_metrics(values, "dpo"), step=step))
    tracking.log_params(ctx.run_id, {f"dpo_trainer.{k}": v for k, v in result.trainer_args.items()
                                     if k in ("beta", "loss_type", "max_length", "learning_rate", "max_steps",
                                              "per_device_train_batch_size", "num_train_epochs", "label_smoothing")})
    tracking.log_dict(ctx.run_id, result.trainer_args, "params/dpo_trainer_args.json")
    tracking.log_metrics(ctx.run_id, result.metrics("dpo"), step=result.global_step)
    checks = dict(result.checks)
    tracking.log_dict(ctx.run_id, checks, "preference/checks.json")
    reference = f"parent:{parent.tag()}"
    tracking.set_tags(ctx.run_id, {tags.PARENT: parent.tag(), tags.PARENT_VERSION: parent.version or "", tags.REFERENCE: reference})
    tracking.log_artifacts(ctx.run_id, result.model_dir, PREFERENCE_ARTIFACT)
    model_uri = tracking.log_transformers_model(ctx.run_id, result.model_dir, name="preference_model")
    info = read_model_info(result.model_dir)
    check = checks.get("reference_check") or {}
    record("preference_training_finished", {
        "run_id": ctx.run_id, "objective": params.train.objective, "parent": parent.to_dict(), "reference": reference,
        "reference_check": check, "final_loss": result.final_loss, "steps": result.global_step, "model_uri": model_uri,
        "resumed_from": result.resumed_from}, model_name=params.model.registered_name, commit=ctx.commit)
    if check:
        logger.info("reference check: policy and reference log-probs equal before the first step (max difference %.2g on %d pairs)",
                    check["max_abs_logp_difference"], check["pairs"])
    logger.info("preference-tuned %d steps in %.1fs, final loss %.4f", result.global_step, result.train_runtime_s, result.final_loss)
    tuned = TunedModel.of(result, model_uri, info.chat_template)
    return replace(tuned, stage="preference", checks=checks)


def fallback_to_parent(params: Params, parent: ParentRef, decision) -> bool:
    """When the preference-tuned model is refused, its parent goes through the gate instead where the parent was
    trained in this run (``preference.gate.fallback: parent``): an SFT+DPO run registers at most one version. A
    parent that is a registered version stays as it is."""
    return decision.action == "reject" and parent.kind == "sft" and params.preference.gate.fallback == "parent"


@dataclass(frozen=True)
class PreferenceOutcome:
    """Which of a preference run's models the final decision is about (``stage`` "preference": the DPO model;
    "sft": its parent, after the DPO model was refused), what to register and the summary's ``preference`` section."""

    stage: str
    model_uri: str
    version_tags: dict[str, str]
    summary: dict[str, Any]


@task(cache_policy=NONE, **RETRY_TRANSIENT)
def preference_outcome(params: Params, ctx: RunContext, parent: ParentRef, pairs: PreferenceRef, sft: TunedModel | None,
                       tuned: TunedModel, refused: tuple, comparison, decision, fell_back: bool) -> PreferenceOutcome:
    """The preference stage's outcome: the DPO model's own comparisons (against its parent, the baseline and the
    base model) and decision, which model the final decision is about and why; tagged and audited."""
    from dataclasses import asdict

    from tunegate.governance.gate import fails_only_against_parent

    dpo_comparison, dpo_decision = refused
    stage = "sft" if fell_back else "preference"
    failed = [c.reason.removeprefix("FAIL ") for c in dpo_decision.checks if c.outcome == "FAIL"]
    registering = decision.action == "register"
    if stage == "preference":
        why = (f"the preference-tuned model passed the gate against {dpo_comparison.baseline.source.replace('_', ' ')} and "
               f"against its parent ({parent.label()}): it is the candidate" if registering else
               f"the preference-tuned model was refused ({'; '.join(failed) or decision.action}); its parent, {parent.label()}, "
               "is a registered version and stays as it is: nothing is registered" if decision.action == "reject" else
               "the preference-tuned model passed the gate, but the candidate waiting for review is better")
    else:
        scope = "against its parent only" if fails_only_against_parent(dpo_decision) else "by the gate"
        why = (f"the preference-tuned model was refused {scope} ({'; '.join(failed)}); its SFT parent "
               + ("passed the gate and is the candidate instead" if registering else
                  "went through the gate instead and was refused too: nothing is registered"))
    artifact = PREFERENCE_ARTIFACT if stage == "preference" else "tunegate_model"
    model_uri = tuned.model_uri if stage == "preference" else (sft.model_uri if sft else parent.model_uri)
    version_tags = {tags.MODEL_ARTIFACT: artifact, tags.REGISTERED_STAGE: stage, tags.PARENT: parent.tag(),
                    tags.PARENT_VERSION: parent.version or "", tags.REFERENCE: f"parent:{parent.tag()}"}
    against = dpo_comparison.parent
    summary = {
        "objective": params.train.objective,
        "start_from": params.preference.start_from,
        "parent": parent.to_dict(),
        "reference": {**parent.to_dict(), "is_parent": True, "check": tuned.checks.get("reference_check")},
        "data": asdict(pairs),
        "sft": {"final_loss": sft.final_loss, "steps": sft.global_step, "model_uri": sft.model_uri} if sft else None,
        "dpo": {"final_loss": tuned.final_loss, "steps": tuned.global_step, "model_uri": tuned.model_uri,
                "runtime_s": tuned.train_runtime_s, "beta": params.preference.train.beta,
                "loss_type": params.preference.train.loss_type},
        "comparisons": {
            "parent": {"deltas": [d.to_dict() for d in against.deltas], "evaluation": against.evaluation,
                       "judge": (against.judge or {}).get("summary"), "held_out": against.preference} if against else None,
            "baseline": {**dpo_comparison.baseline.to_dict(), "deltas": [d.to_dict() for d in dpo_comparison.deltas]},
            "base": {"deltas": [d.to_dict() for d in dpo_comparison.base_deltas]},
        },
        "candidate_metrics": dpo_comparison.candidate_metrics,
        "gate": dpo_decision.to_dict(),
        "stage": stage,
        "registered_stage": stage if registering else None,
        "why": why,
    }
    tracking.log_dict(ctx.run_id, summary, "preference/outcome.json")
    tracking.set_tags(ctx.run_id, {tags.REGISTERED_STAGE: stage if registering else ""})
    record("preference_decision", {"run_id": ctx.run_id, "stage": stage, "registering": registering, "why": why,
                                   "dpo_gate_passed": dpo_decision.passed, "dpo_failed": failed, "parent": parent.to_dict()},
           model_name=params.model.registered_name, commit=ctx.commit)
    get_run_logger().info("preference stage: %s", why)
    return PreferenceOutcome(stage, model_uri, version_tags, summary)
