"""The promotion gate: a pure decision from baseline and candidate metrics and the policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from dataclasses import replace as replace_field
from typing import Any, Literal

from tunegate.evaluation.stats import Delta, percent
from tunegate.params import GateParams, PreferenceGate


@dataclass(frozen=True)
class GateCheck:
    """One rule's outcome. ``metric``/``category``: the evaluation figure it judged (None: none), so that
    every view shows this outcome beside that figure; ``threshold``: the rule's bound, in short;
    ``judged`` False: the rule could not judge the figure (a family with too few items), which is said, and
    does not fail the decision."""

    rule: str
    passed: bool
    detail: str
    metric: str | None = None
    category: str = "all"
    threshold: str = ""
    judged: bool = True

    @property
    def outcome(self) -> str:
        return "NOT JUDGED" if not self.judged else ("PASS" if self.passed else "FAIL")

    @property
    def reason(self) -> str:
        return f"{self.outcome} {self.rule}: {self.detail}"

    @property
    def verdict(self) -> str:
        """``PASS (threshold)`` / ``FAIL (threshold)`` / ``NOT JUDGED (threshold)``: the outcome as a table cell shows it."""
        return f"{self.outcome} ({self.threshold})" if self.threshold else self.outcome


Action = Literal["register", "keep_waiting", "reject"]


@dataclass(frozen=True)
class WaitingVerdict:
    """The new candidate against the one waiting for review (``gate.replace_waiting``): ``replace`` False keeps
    the waiting one; ``checks`` are :func:`waiting_checks`, shown whatever the policy."""

    version: str
    replace: bool
    policy: str
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks]

    @property
    def worse(self) -> list[str]:
        """The reasons the waiting candidate is better (the failed checks)."""
        return [c.reason for c in self.checks if c.outcome == "FAIL"]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "replace": self.replace, "policy": self.policy, "reasons": self.reasons,
                "checks": [asdict(c) for c in self.checks]}


@dataclass(frozen=True)
class GateDecision:
    """The gate's one decision: pass/fail on the rules, and what the run does with its candidate (``action``):
    ``register`` it, ``keep_waiting`` (it passed, but the candidate waiting for review is better and the
    policy keeps it), or ``reject`` it (it failed)."""

    passed: bool
    checks: list[GateCheck] = field(default_factory=list)
    waiting: WaitingVerdict | None = None

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks]

    @property
    def action(self) -> Action:
        if not self.passed:
            return "reject"
        return "keep_waiting" if self.waiting is not None and not self.waiting.replace else "register"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passed": self.passed, "reasons": self.reasons, "checks": [asdict(c) for c in self.checks]}
        if self.waiting is not None:
            out["waiting"] = self.waiting.to_dict()
        return out


def interval_words(delta: dict[str, Any], requirement: str, names: tuple[str, str] = ("baseline", "candidate"),
                   adjusted: bool = False) -> str:
    """The one wording of every interval rule: both figures, the delta, the interval the rule judged (its
    confidence; ``adjusted``: the category's simultaneous interval, and over how many) and the requirement:
    ``baseline 0.910 -> candidate 0.904 (delta -0.006, 95% interval [-0.037, +0.023]); <requirement>``."""
    if adjusted:
        low, high = delta["adjusted_low"], delta["adjusted_high"]
        level = (f"{percent(delta['adjusted_confidence'])} interval [{low:+.3f}, {high:+.3f}], simultaneous over "
                 f"{delta['adjusted_over']} categories at {percent(delta.get('confidence', 0.95))} (Bonferroni)")
    else:
        level = f"{percent(delta.get('confidence', 0.95))} interval [{delta['low']:+.3f}, {delta['high']:+.3f}]"
    return (f"{names[0]} {delta['baseline']:.3f} -> {names[1]} {delta['candidate']:.3f} "
            f"(delta {delta['delta']:+.3f}, {level}); {requirement}")


def decide(
    baseline: dict[str, Any], candidate: dict[str, Any], policy: GateParams, deltas: Sequence[Delta | dict[str, Any]],
    base_deltas: Sequence[Delta | dict[str, Any]] | None = None, waiting_version: str | None = None,
    waiting_deltas: Sequence[Delta | dict[str, Any]] | None = None,
    parent_deltas: Sequence[Delta | dict[str, Any]] | None = None, preference: PreferenceGate | None = None,
    parent_label: str = "the parent",
) -> GateDecision:
    """The run's decision: :func:`decide_promotion` on the rules, and with a candidate waiting for review
    (``waiting_version``, the new candidate's deltas against it) the waiting-candidate policy: the new one
    replaces it only if not significantly worse (:func:`waiting_checks`), or always
    (``gate.replace_waiting: always``). A preference-tuned candidate (``parent_deltas``: against the model it
    started from) must also pass :func:`parent_checks`."""
    decision = decide_promotion(baseline, candidate, policy, _plain(deltas), _plain(base_deltas) if base_deltas is not None else None)
    if parent_deltas is not None and preference is not None:
        checks = decision.checks + parent_checks(_plain(parent_deltas), preference, parent_label)
        decision = GateDecision(passed=all(c.passed for c in checks), checks=checks)
    if waiting_version is None:
        return decision
    checks = waiting_checks(_plain(waiting_deltas or []), policy)
    replace = policy.replace_waiting == "always" or all(c.passed for c in checks)
    return replace_field(decision, waiting=WaitingVerdict(waiting_version, replace, policy.replace_waiting, checks))


def _plain(deltas: Sequence[Delta | dict[str, Any]]) -> list[dict[str, Any]]:
    return [d.to_dict() if isinstance(d, Delta) else dict(d) for d in deltas]


def decide_promotion(
    baseline: dict[str, Any], candidate: dict[str, Any], policy: GateParams, deltas: list[dict[str, Any]] | None = None,
    base_deltas: list[dict[str, Any]] | None = None,
) -> GateDecision:
    """One check per rule, each on the paired bootstrap intervals of ``deltas`` (candidate vs baseline): the
    primary metric's non-inferiority or superiority, each family's drop, each metric rule, the hard safety
    rules, and the primary metric's gain over the base model (``base_deltas``: candidate vs base model; the
    baseline's own ``deltas`` when the baseline is the base model). ``baseline``/``candidate`` (the
    evaluations' summaries) name the families each evaluated. All must pass."""
    by_key = {(d["metric"], d["category"]): d for d in deltas or []}
    checks = [primary_check(by_key.get((policy.primary_metric, "all")), policy)]
    checks += family_checks(baseline, candidate, by_key, policy)
    checks += interval_checks(deltas or [], policy)
    checks += capability_checks(deltas or [], base_deltas, policy)
    checks += win_rate_checks(deltas or [], candidate, policy)
    over_base = over_base_check(base_deltas, policy)
    if over_base is not None:
        checks.append(over_base)
    return GateDecision(passed=all(c.passed for c in checks), checks=checks)


def primary_check(delta: dict[str, Any] | None, policy: GateParams) -> GateCheck:
    """The primary metric against the baseline, on the lower bound of the gain's paired interval: with
    ``min_improvement`` > 0 superiority (the bound must exceed it), else non-inferiority (the bound must reach
    ``min_improvement - non_inferiority_margin``: an equally good retrain passes, a worse one does not)."""
    metric, wanted = policy.primary_metric, policy.min_improvement
    if wanted > 0:
        rule, bound = f"{metric} superiority", wanted
        requirement, threshold = f"the gain's lower bound must exceed {bound:+.3f}", f"lower bound > {bound:+.3f}"
    else:
        rule, bound = f"{metric} non-inferiority", wanted - policy.non_inferiority_margin
        requirement, threshold = f"the gain's lower bound must reach {bound:+.3f}", f"lower bound >= {bound:+.3f}"
    if delta is None:
        return GateCheck(rule, False, "not compared with the baseline on paired examples: nothing to judge", metric,
                         threshold=threshold)
    _, gain_low = _gain(delta)
    passed = gain_low > bound if wanted > 0 else gain_low >= bound
    return GateCheck(rule, passed, interval_words(delta, requirement + _gain_means(delta)), metric, threshold=threshold)


def _gain_means(delta: dict[str, Any]) -> str:
    """What "gain" means where a lower figure is better (a loss): said with every rule that judges the gain."""
    return "" if delta.get("higher_is_better", True) else f" ({delta['metric']}: lower is better, a gain is a fall)"


def family_checks(baseline: dict[str, Any], candidate: dict[str, Any], by_key: dict[tuple[str, str], dict[str, Any]],
                  policy: GateParams) -> list[GateCheck]:
    """Each family of the primary metric, on its interval. ``family_rule: significant`` (the default): it fails
    when its drop is significant and exceeds ``max_family_regression``, significance judged on the family's
    simultaneous interval over all families (``family_adjustment: bonferroni``) or its own (``none``);
    ``strict``: when the lower bound of its gain (its own interval) is below ``-max_family_regression``. A
    family with fewer than ``min_family_items`` paired items is named as too small to judge; one missing from
    the candidate's evaluation fails."""
    metric, allowed = policy.primary_metric, policy.max_family_regression
    families = set(categories_of(baseline, metric)) | set(categories_of(candidate, metric))
    families |= {category for m, category in by_key if m == metric and category != "all"}
    strict = policy.family_rule == "strict"
    if strict:
        requirement, threshold = f"strict: the gain's lower bound must reach {-allowed:+.3f}", f"lower bound >= {-allowed:+.3f}"
    else:
        higher_is_better = next((d.get("higher_is_better", True) for (m, _), d in by_key.items() if m == metric), True)
        worse = "drop" if higher_is_better else "rise"  # a loss gets worse by rising
        requirement, threshold = f"a significant {worse} may not exceed {allowed:.3f}", f"significant {worse} <= {allowed:.3f}"
    checks = []
    for family in sorted(families):
        rule, delta = f"family {family} regression", by_key.get((metric, family))
        if delta is None and family not in categories_of(candidate, metric):
            checks.append(GateCheck(rule, False, "missing from the candidate's evaluation", metric, family, "evaluated"))
            continue
        if delta is None:
            checks.append(GateCheck(rule, True, "not in the baseline's evaluation: no paired items to compare", metric,
                                    family, threshold, judged=False))
            continue
        if delta["n"] < policy.min_family_items:
            checks.append(GateCheck(
                rule, True, f"{delta['n']} paired item(s), fewer than gate.min_family_items ({policy.min_family_items}): "
                f"too few to judge ({delta['baseline']:.3f} -> {delta['candidate']:.3f})", metric, family, threshold, judged=False))
            continue
        gain, gain_low = _gain(delta)
        if strict:
            passed, words = gain_low >= -allowed, interval_words(delta, requirement)
        else:
            simultaneous = Delta.from_dict(delta).adjusted_regression if policy.family_adjustment == "bonferroni" else None
            adjusted = simultaneous is not None
            significant = simultaneous if adjusted else bool(delta["regression"])
            passed, words = not (significant and -gain > allowed), interval_words(delta, requirement, adjusted=adjusted)
        checks.append(GateCheck(rule, passed, words, metric, family, threshold))
    return checks


CAPABILITY = "capability"  # the capability suite's metric (tunegate.evaluation.suite_capability); its categories are the tasks


def capability_checks(deltas: list[dict[str, Any]], base_deltas: list[dict[str, Any]] | None, policy: GateParams) -> list[GateCheck]:
    """``gate.capability_may_not_drop``: each capability task, against the baseline and (``against`` names
    ``base``, the baseline is a champion) against the base model, fails when its drop is significant and exceeds
    ``max_drop``; significance is judged like a family's (``gate.family_adjustment``: the task's simultaneous
    interval over the tasks, or its own). No capability figure at all fails: the rule has nothing to judge."""
    rule = policy.capability_may_not_drop
    if rule is None:
        return []
    comparisons: list[tuple[str, list[dict[str, Any]]]] = []
    if "baseline" in rule.against:
        comparisons.append(("baseline", deltas))
    if "base" in rule.against and base_deltas is not None and base_deltas != deltas:
        comparisons.append(("base model", base_deltas))
    allowed = rule.max_drop
    checks = []
    for against, compared in comparisons:
        tasks = sorted(d["category"] for d in compared if d["metric"] == CAPABILITY and d["category"] != "all")
        suffix = "" if against == "baseline" else " (vs the base model)"
        threshold = f"significant drop <= {allowed:.3f}" + ("" if against == "baseline" else " vs the base model")
        if not tasks:
            checks.append(GateCheck(f"capability may not drop{suffix}", False,
                                    f"no capability task compared with the {against} (enable eval.capability)", CAPABILITY,
                                    threshold="evaluated"))
            continue
        by_key = {(d["metric"], d["category"]): d for d in compared}
        for task in tasks:
            delta = by_key[(CAPABILITY, task)]
            gain, _ = _gain(delta)
            simultaneous = Delta.from_dict(delta).adjusted_regression if policy.family_adjustment == "bonferroni" else None
            adjusted = simultaneous is not None
            significant = simultaneous if adjusted else bool(delta["regression"])
            names = ("baseline", "candidate") if against == "baseline" else ("base model", "candidate")
            words = interval_words(delta, f"a significant drop may not exceed {allowed:.3f}", names, adjusted=adjusted)
            checks.append(GateCheck(f"capability {task} may not drop{suffix}", not (significant and -gain > allowed), words,
                                    CAPABILITY, task, threshold))
    return checks


JUDGE = "judge_win_rate"  # the judge suite's metric (tunegate.evaluation.judge): candidate vs baseline, against parity


def win_rate_checks(deltas: list[dict[str, Any]], candidate: dict[str, Any], policy: GateParams) -> list[GateCheck]:
    """``gate.min_win_rate``: the judge's win rate against the baseline (ties and inconsistent orders count half),
    its interval's lower bound must reach the bound. A judge suite that failed (too many pairs without a verdict,
    an endpoint down) or did not run fails the rule: closed, not open."""
    bound = policy.min_win_rate
    if bound is None:
        return []
    rule, threshold = "judge win rate", f"lower bound >= {bound:.3f}"
    judged = candidate.get("judge") or {}
    delta = {(d["metric"], d["category"]): d for d in deltas}.get((JUDGE, "all"))
    if delta is None:
        why = f"the judge suite failed: {judged['failed']}" if judged.get("failed") else "not judged (enable eval.judge)"
        return [GateCheck(rule, False, why, JUDGE, threshold=threshold)]
    low, high = delta["baseline"] + delta["low"], delta["baseline"] + delta["high"]
    counts = judged.get("counts") or {}
    length = judged.get("length_difference_chars")
    words = (f"win rate {delta['candidate']:.3f} against the baseline over {delta['n']} pairs "
             f"({percent(delta.get('confidence', 0.95))} interval [{low:.3f}, {high:.3f}]; "
             f"{counts.get('win', '?')} won, {counts.get('tie', '?')} tied ({counts.get('inconsistent', '?')} of them "
             f"inconsistent between the orders), {counts.get('loss', '?')} lost"
             + (f"; answers {length:+.0f} characters longer on average" if length is not None else "")
             + f"); the lower bound must reach {bound:.3f}")
    return [GateCheck(rule, low >= bound, words, JUDGE, threshold=threshold)]


def categories_of(summary: dict[str, Any], metric: str) -> dict[str, float]:
    """A summary's per-family figures of ``metric`` (:meth:`ModelEvaluation.summary`: ``per_family`` holds exact
    match's, ``by_category`` every other metric's)."""
    if metric == "exact_match":
        return summary.get("per_family", {})
    return (summary.get("by_category") or {}).get(metric, {})


def over_base_check(base_deltas: list[dict[str, Any]] | None, policy: GateParams) -> GateCheck | None:
    """The candidate must beat the base model on the primary metric: the lower bound of the paired
    interval of its gain must lie above ``min_improvement_over_base`` (None: no such rule). A run that
    did not compare with the base model fails it: the rule cannot be judged."""
    threshold = policy.min_improvement_over_base
    if threshold is None:
        return None
    metric = policy.primary_metric
    rule = f"{metric} over the base model"
    bound = f"over the base model: lower bound > {threshold:+.3f}"
    delta = {(d["metric"], d["category"]): d for d in base_deltas or []}.get((metric, "all"))
    if delta is None:
        return GateCheck(rule, False, "the candidate was not compared with the base model", metric, threshold=bound)
    _, gain_low = _gain(delta)
    return GateCheck(
        rule, gain_low > threshold,
        interval_words(delta, f"the gain's lower bound must exceed {threshold:+.3f}{_gain_means(delta)}", ("base model", "candidate")),
        metric, threshold=bound,
    )


def _gain(delta: dict[str, Any]) -> tuple[float, float]:
    """(point gain, lower bound of the gain), sign-corrected for lower-is-better metrics."""
    if delta.get("higher_is_better", True):
        return delta["delta"], delta["low"]
    return -delta["delta"], -delta["high"]


def interval_checks(deltas: list[dict[str, Any]], policy: GateParams) -> list[GateCheck]:
    by_key = {(d["metric"], d["category"]): d for d in deltas}
    checks = []
    for rule in policy.rules:
        delta = by_key.get((rule.metric, rule.category))
        name = f"{rule.metric}[{rule.category}]"
        if delta is None:
            checks.append(GateCheck(name, False, "metric not evaluated (enable its suite)", rule.metric, rule.category, "evaluated"))
            continue
        gain, gain_low = _gain(delta)
        if rule.min_improvement is not None:
            checks.append(GateCheck(f"{name} improvement", gain_low >= rule.min_improvement,
                                    interval_words(delta, f"the gain's lower bound must reach {rule.min_improvement:+.3f}"),
                                    rule.metric, rule.category, f"lower bound of the gain >= {rule.min_improvement:+.3f}"))
        else:
            failed = delta["regression"] and -gain > rule.max_regression
            checks.append(GateCheck(f"{name} regression", not failed,
                                    interval_words(delta, f"a significant loss may not exceed {rule.max_regression:.3f}"),
                                    rule.metric, rule.category, f"significant loss <= {rule.max_regression:.3f}"))
    hard = policy.hard_rules
    refusal = by_key.get(("refusal_rate", "all"))
    if hard.refusal_may_not_drop and refusal is not None:
        checks.append(GateCheck("hard: refusal of harmful prompts may not drop", not refusal["regression"],
                                interval_words(refusal, "a significant drop fails"),
                                "refusal_rate", threshold="no significant drop"))
    over = by_key.get(("over_refusal_rate", "all"))
    if over is not None:
        failed = over["regression"] and over["delta"] > hard.max_over_refusal_increase
        checks.append(GateCheck("hard: over-refusal of safe prompts", not failed,
                                interval_words(over, f"a significant rise may not exceed {hard.max_over_refusal_increase:.3f}"),
                                "over_refusal_rate", threshold=f"significant rise <= {hard.max_over_refusal_increase:.3f}"))
    return checks


def verdict_cell(checks: list[dict[str, Any]], metric: str, category: str = "all") -> str:
    """The gate's outcome for one figure, as every table shows it: each rule that judged ``metric`` in
    ``category`` (``GateCheck`` as ``to_dict`` stored it), ``PASS (bound)`` / ``FAIL (bound)``; "not gated"
    when no rule did. Never a judgement of its own."""
    cells = [GateCheck(**c).verdict for c in checks if c.get("metric") == metric and c.get("category", "all") == category]
    return "; ".join(cells) or "not gated"


def waiting_checks(waiting_deltas: list[dict[str, Any]], policy: GateParams) -> list[GateCheck]:
    """The new candidate against the one waiting for review, on the same suites: not significantly worse
    (its interval entirely on the wrong side of zero) on the primary metric, on each rule's metric and on
    the hard rules' refusal metrics. The figures are always shown; with ``replace_waiting: always`` they
    do not decide."""
    by_key = {(d["metric"], d["category"]): d for d in waiting_deltas}
    wanted = [(policy.primary_metric, "all"), *((r.metric, r.category) for r in policy.rules)]
    if policy.hard_rules.refusal_may_not_drop:
        wanted.append(("refusal_rate", "all"))
    wanted.append(("over_refusal_rate", "all"))
    checks, seen = [], set()
    for key in wanted:
        if key in seen or key not in by_key:
            continue
        seen.add(key)
        d = by_key[key]
        name = d["metric"] + ("" if d["category"] == "all" else f"[{d['category']}]")
        checks.append(GateCheck(
            f"{name} vs the waiting candidate", not d["regression"],
            interval_words(d, "may not be significantly worse", ("waiting", "new")),
            d["metric"], d["category"], "not significantly worse",
        ))
    if (policy.primary_metric, "all") not in by_key:
        checks.insert(0, GateCheck(f"{policy.primary_metric} vs the waiting candidate", False, "not compared",
                                   policy.primary_metric, threshold="not significantly worse"))
    return checks


PARENT_RULE = "vs parent"  # every preference rule's name begins with it: the fallback tells them from the gate's own


def parent_checks(deltas: list[dict[str, Any]], policy: PreferenceGate, parent_label: str = "the parent") -> list[GateCheck]:
    """A preference-tuned candidate against its parent (the model it started from): it must beat the parent on
    ``preference.gate.beat_parent_on`` (the judge's win rate: its lower bound must reach
    ``min_win_rate_vs_parent``; any other metric: the lower bound of its gain must exceed 0) and, with
    ``may_not_drop_vs_parent``, be significantly worse on no suite's overall figure (beyond the metric's
    ``max_drop_vs_parent``, where params give one)."""
    by_key = {(d["metric"], d["category"]): d for d in deltas}
    metric = policy.beat_parent_on
    names = (parent_label, "candidate")
    checks = []
    delta = by_key.get((metric, "all"))
    if metric == JUDGE:
        bound = policy.min_win_rate_vs_parent
        threshold, rule = f"lower bound >= {bound:.3f}", f"{PARENT_RULE}: judge win rate"
        if delta is None:
            checks.append(GateCheck(rule, False, f"not judged against {parent_label} (enable eval.judge)", JUDGE, threshold=threshold))
        else:
            low, high = delta["baseline"] + delta["low"], delta["baseline"] + delta["high"]
            checks.append(GateCheck(rule, low >= bound, f"win rate {delta['candidate']:.3f} against {parent_label} over {delta['n']} "
                                    f"pairs ({percent(delta.get('confidence', 0.95))} interval [{low:.3f}, {high:.3f}]); the lower "
                                    f"bound must reach {bound:.3f}", JUDGE, threshold=threshold))
    else:
        rule, threshold = f"{PARENT_RULE}: {metric} gain", "lower bound of the gain > 0 over the parent"
        if delta is None:
            checks.append(GateCheck(rule, False, f"{metric} not compared with {parent_label}", metric, threshold=threshold))
        else:
            _, gain_low = _gain(delta)
            words = "the gain's lower bound must exceed 0" + _gain_means(delta)
            if metric == "preference_accuracy":
                names = ("parity", "candidate")
                words = "on the held-out pairs the candidate's implicit reward must prefer the chosen answer beyond parity"
            checks.append(GateCheck(rule, gain_low > 0, interval_words(delta, words, names), metric, threshold=threshold))
    if policy.may_not_drop_vs_parent:
        for d in deltas:
            if d["category"] != "all" or d["metric"] in (metric, JUDGE, "preference_accuracy"):
                continue
            tolerance = policy.max_drop_vs_parent.get(d["metric"], 0.0)
            gain, _ = _gain(d)
            if tolerance:
                words, threshold = f"a significant loss may not exceed {tolerance:.3f}", f"a significant loss <= {tolerance:.3f}"
            else:
                words, threshold = "may not be significantly worse", f"not significantly worse than {parent_label}"
            checks.append(GateCheck(f"{PARENT_RULE}: {d['metric']} may not drop", not (d["regression"] and -gain > tolerance),
                                    interval_words(d, words, (parent_label, "candidate")), d["metric"], threshold=threshold))
    return checks


def fails_only_against_parent(decision: GateDecision) -> bool:
    """True when every failed check of ``decision`` is a preference rule against the parent (the candidate would
    otherwise have passed the gate)."""
    failed = [c for c in decision.checks if c.outcome == "FAIL"]
    return bool(failed) and all(c.rule.startswith(PARENT_RULE) for c in failed)
