"""The evaluation suites: the registered ones (:data:`REGISTRY`), run on one model and compared pairwise.

Each suite scores one model example by example (``Score``: key, category, value), so the
baseline and the candidate can be compared pairwise (``compare``) with bootstrap intervals.
The built-in suites are response loss, reference tasks, verifiable instruction following and
safety, one module each (``suite_*.py``), registered below with one line each; a suite of
your own is one module and one ``REGISTRY.register(SUITE)`` (README: "Adding a suite").
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tunegate.evaluation import suite_capability, suite_ifeval, suite_judge, suite_reference, suite_response_loss, suite_safety
from tunegate.evaluation.generation import Generated, generate, render_prompts  # noqa: F401  (generate, render_prompts: re-exported)
from tunegate.evaluation.registry import EvalFile, Registry
from tunegate.evaluation.scores import ModelEvaluation, Score
from tunegate.evaluation.stats import Delta, paired_bootstrap
from tunegate.evaluation.suite_reference import ScriptTokenizer, rouge_scorer_any_script, worst_regressions  # noqa: F401  (re-exported)
from tunegate.params import EvalParams, GateParams
from tunegate.paths import resolve_path

# The registered suites, in the order they run and the report lists them: one line each.
REGISTRY = Registry((
    suite_response_loss.SUITE,
    suite_reference.SUITE,
    suite_ifeval.SUITE,
    suite_safety.SUITE,
    suite_capability.SUITE,
    suite_judge.SUITE,
))


def evaluate_suites(model, tokenizer, records: list[dict[str, Any]], params: EvalParams, progress=None) -> ModelEvaluation:
    """Every enabled suite on one model; same prompts, greedy decoding, same template for every model."""
    result = ModelEvaluation()
    cache: Generated = {}
    for suite in REGISTRY.suites():
        if suite.enabled(params):
            if progress:
                progress(suite.progress or suite.name)
            suite.run(model, tokenizer, records, params, result, cache)
    return result


def compare(baseline: ModelEvaluation, candidate: ModelEvaluation, params: EvalParams) -> list[Delta]:
    """Candidate - baseline for every metric, overall and per category, with paired bootstrap intervals;
    each of a metric's k categories also with its simultaneous interval over the k (Bonferroni), which the
    gate's family rule judges."""
    deltas = []
    for metric, values in candidate.scores.items():
        base_by_key = {s.key: s for s in baseline.scores.get(metric, [])}
        pairs = [(base_by_key[s.key], s) for s in values if s.key in base_by_key]
        if not pairs:
            continue
        higher = REGISTRY.higher_is_better(metric)
        groups: dict[str, list[tuple[Score, Score]]] = defaultdict(list)
        for pair in pairs:
            groups[pair[1].category].append(pair)
        for category, members in [("all", pairs)] + sorted(groups.items()):
            deltas.append(
                paired_bootstrap(
                    [b.value for b, _ in members],
                    [c.value for _, c in members],
                    weights=[c.weight for _, c in members],
                    metric=metric,
                    category=category,
                    resamples=params.bootstrap_resamples,
                    confidence=params.confidence,
                    seed=params.seed,
                    higher_is_better=higher,
                    adjusted_over=None if category == "all" else len(groups),
                )
            )
    return deltas


def eval_files(params: EvalParams) -> dict[str, tuple[str, str]]:
    """Every enabled eval file: set name (``ifeval``, then each safety set's name: ``advbench``,
    ``xstest`` for the defaults) -> (params key, path as written)."""
    return {check.name: (check.key, check.path) for check in _file_checks(params)}


def load_items_md5(params: EvalParams) -> dict[str, str]:
    """md5 of each frozen eval file the suites read (for MLflow, like training data), by set name."""
    from tunegate.data.digest import file_md5

    paths = {name: resolve_path(path) for name, (_, path) in eval_files(params).items()}
    out = {name: file_md5(path) for name, path in paths.items() if path.is_file()}
    for suite in REGISTRY.suites():
        if suite.digests is not None and suite.enabled(params):
            out.update(suite.digests(params))
    return out


def _file_checks(params: EvalParams) -> list[EvalFile]:
    """Every enabled suite's eval files, in the registry's order."""
    return [f for suite in REGISTRY.suites() if suite.files is not None and suite.enabled(params) for f in suite.files(params)]


def _file_problems(check: EvalFile) -> list[str]:
    """Problems of one eval file that exists: missing columns, no usable rows (may raise on a bad file)."""
    from tunegate.evaluation.safety import iter_rows

    path = resolve_path(check.path)
    if check.suffix and path.suffix.lower() != check.suffix:
        return [f"{check.key}: {path} is not {check.suffix_means}"]
    seen: set[str] = set()
    rows = usable = 0
    for row in iter_rows(path):
        seen.update(row)
        rows += 1
        usable += bool(check.is_usable(row))
    if not rows:
        return [f"{check.key}: {path} has no rows"]
    have = ", ".join(sorted(seen))
    problems = [
        f"{check.key}: {path} has no column {column!r} (asked for by {asker}); its columns: {have}; "
        f"set {asker} to one of them"
        for asker, column in check.columns.items() if column not in seen
    ]
    if not problems and not usable:
        problems.append(f"{check.key}: {path} has no usable rows: none of its {rows} rows has {check.usable_means}")
    return problems


def eval_file_problems(params: EvalParams) -> list[str]:
    """One readable sentence per problem with an enabled eval file (IFEval, harmful, over-refusal set):
    the file does not exist, a column is missing, no usable rows, the file cannot be parsed.

    Never raises for a bad file; reads each (small) file once, loads no model. For a preflight.
    """
    problems: list[str] = []
    for check in _file_checks(params):
        try:
            path = resolve_path(check.path)
            if not path.is_file():
                problems.append(
                    f"{check.key}: {check.path!r} does not exist (resolved to {path}); fix the path, or disable "
                    "the set (null) or its suite (enabled: false)"
                )
                continue
            problems += _file_problems(check)
        except Exception as error:  # a preflight reports bad files, it does not crash on them
            problems.append(f"{check.key}: {check.path!r} cannot be read: {type(error).__name__}: {error}")
    for suite in REGISTRY.suites():
        if suite.problems is not None and suite.enabled(params):
            try:
                problems += suite.problems(params)
            except Exception as error:
                problems.append(f"eval.{suite.section}: {type(error).__name__}: {error}")
    return problems


def gate_metric_problems(gate: GateParams, params: EvalParams | None = None, preference: Any = None) -> list[str]:
    """One sentence per metric the gate's policy names that no registered suite computes (the primary metric,
    each rule's), and with ``params`` one per metric whose suite is disabled there (the gate would have no
    figure to judge). For a preflight: the metric names a rule may use are the registry's."""
    named = [("gate.primary_metric", gate.primary_metric)] + [(f"gate.rules[{i}].metric", r.metric) for i, r in enumerate(gate.rules)]
    problems = named_metric_problems(named, params)
    judge = REGISTRY.suite_of("judge_win_rate")
    if gate.min_win_rate is not None and params is not None and judge is not None and not judge.enabled(params):
        problems.append("gate.min_win_rate: the judge suite is off (eval.judge.enabled: false); turn it on, or set "
                        "gate.min_win_rate: null")
    if preference is not None:
        problems += preference_gate_problems(preference, params)
    capability = REGISTRY.suite_of("capability")
    if gate.capability_may_not_drop is not None and params is not None and capability is not None and not capability.enabled(params):
        problems.append("gate.capability_may_not_drop: the capability suite is off (eval.capability.enabled: false); "
                        "turn it on and name its tasks, or set gate.capability_may_not_drop: null")
    return problems


def preference_gate_problems(preference: Any, params: EvalParams | None = None) -> list[str]:
    """The metrics ``preference.gate`` names (``beat_parent_on``, ``max_drop_vs_parent``'s keys) that no registered
    suite computes (``preference_accuracy``: the held-out pairs'), or whose suite is off in ``params``."""
    gate = preference.gate
    named = [("preference.gate.beat_parent_on", gate.beat_parent_on)]
    named += [(f"preference.gate.max_drop_vs_parent.{m}", m) for m in gate.max_drop_vs_parent]
    # preference_accuracy is always measured: the held-out pairs (data.eval or eval_fraction of train)
    return named_metric_problems(named, params, also=("preference_accuracy",))


def minimum_problems(minimums: list[Any]) -> list[str]:
    """``governance.minimums`` naming a metric no registered suite computes. (A minimum whose suite is off is not
    refused: the card states it as not evaluated, itself a limitation.)"""
    return named_metric_problems([(f"governance.minimums[{i}].metric", m.metric) for i, m in enumerate(minimums)])


def named_metric_problems(named: list[tuple[str, str]], params: EvalParams | None = None, also: tuple[str, ...] = ()) -> list[str]:
    """For each ``(params key, metric)``: a sentence when no registered suite computes the metric (``also``: names
    measured outside the suites), and with ``params`` when its suite is off there."""
    known = ", ".join([*REGISTRY.metric_names(), *also])
    problems = []
    for key, metric in named:
        if metric in also:
            continue
        suite = REGISTRY.suite_of(metric)
        if suite is None:
            problems.append(f"{key}: no registered suite computes {metric!r}; the metrics: {known}")
        elif params is not None and not suite.enabled(params):
            switch = f"eval.{suite.section}" + ("" if suite.params is bool else ".enabled")
            problems.append(f"{key}: {metric!r} comes from the {suite.name} suite, which is off ({switch}: false); "
                            f"turn it on, or name a metric of a suite that runs")
    return problems
