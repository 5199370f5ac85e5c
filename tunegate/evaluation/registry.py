"""What an evaluation suite declares, and the registry that every part of the evaluation reads.

A suite is one module that builds a :class:`Suite`: its name, its params section (``eval.<section>``),
its metrics (each with its direction), the modules whose source is part of the evaluation's cache key,
its report rows and the function that scores a model. Registering it is one line: the built-ins are
listed in :data:`tunegate.evaluation.suites.REGISTRY`; anything else calls ``REGISTRY.register(SUITE)``
(tests: ``with REGISTRY.registered(SUITE): ...``).

From the registry come the suites an evaluation runs (:func:`tunegate.evaluation.suites.evaluate_suites`),
each metric's direction (:func:`~tunegate.evaluation.suites.compare`), the sources of the cache key
(:mod:`tunegate.evaluation.cache`), the report's rows and plots (:mod:`tunegate.evaluation.report`), the
eval files the preflight checks and the metric names the gate's rules may name
(:mod:`tunegate.governance.gate`). A registered suite's metrics are logged to MLflow and shown in
``--json`` like any other (``<role>_<metric>``, ``delta_<metric>``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from tunegate.evaluation.generation import Generated
    from tunegate.evaluation.scores import ModelEvaluation
    from tunegate.params import EvalParams


@dataclass(frozen=True)
class Metric:
    """One figure a suite computes. ``unit_interval``: a share in [0, 1] (drawn in the report's bar chart of
    every suite); ``plot_categories``: its per-category deltas are drawn in the report's category plot."""

    name: str
    higher_is_better: bool = True
    unit_interval: bool = True
    plot_categories: bool = False


@dataclass(frozen=True)
class EvalFile:
    """A frozen file a suite reads (its md5 is part of the cache key and logged as a tag; the preflight
    checks it exists and has usable rows)."""

    name: str  # the set's name: ifeval, advbench, xstest, ...
    key: str  # params key of the path, e.g. eval.safety.harmful.path
    path: str  # as written in params
    columns: dict[str, str]  # who asks for it (a params key or a format) -> column
    is_usable: Callable[[dict[str, Any]], bool]
    usable_means: str  # for the message when no row is usable
    suffix: str | None = None  # the only suffix the file may have (e.g. ".jsonl"), and why:
    suffix_means: str = ""


# run(model, tokenizer, records, eval params, result to add scores and examples to, generation cache)
RunSuite = Callable[[Any, Any, list, "EvalParams", "ModelEvaluation", "Generated | None"], None]


@dataclass(frozen=True)
class Suite:
    """An evaluation suite, as the registry knows it.

    ``section``: its key under ``eval.`` and ``params``: that section's pydantic model (a model with an
    ``enabled`` field, or ``bool`` for an on/off switch such as ``eval.response_loss``); the built-ins'
    sections are declared in :class:`tunegate.params.EvalParams` (their keys are a user contract), any other
    suite's section is validated by its own model once registered. ``sources``: the modules (by import name)
    whose source is part of the evaluation's cache key: edit one and earlier evaluations are no longer
    reused. ``digests``: the md5 of files it reads beyond ``files``; ``problems``: what the preflight says about its
    settings (a task that cannot run). ``report_rows``: its metrics in the report's table, in this order (empty: all of ``metrics``);
    ``report_note``: a sentence the report adds to its explanation. ``files``: the frozen files it reads.
    """

    name: str
    section: str
    params: type
    metrics: tuple[Metric, ...]
    sources: tuple[str, ...]
    run: RunSuite
    progress: str = ""  # what the progress line says while it runs; default: the name
    report_rows: tuple[str, ...] = ()
    report_note: str = ""
    files: Callable[[EvalParams], list[EvalFile]] | None = None
    # Files it reads that are not EvalFile rows (task definitions, benchmark folders): name -> md5, in the
    # evaluation's key and the lineage like the eval files; and the preflight's sentences about its settings.
    digests: Callable[[EvalParams], dict[str, str]] | None = None
    problems: Callable[[EvalParams], list[str]] | None = None

    def section_of(self, params: EvalParams) -> Any:
        """This suite's ``eval.<section>`` in ``params``."""
        return getattr(params, self.section)

    def enabled(self, params: EvalParams) -> bool:
        value = self.section_of(params)
        return value if isinstance(value, bool) else bool(getattr(value, "enabled", True))

    def rows(self) -> tuple[str, ...]:
        return self.report_rows or tuple(m.name for m in self.metrics)


class Registry:
    """The registered suites, in the order an evaluation runs them (and the report lists them)."""

    def __init__(self, suites: tuple[Suite, ...] | list[Suite] = ()) -> None:
        self._suites: list[Suite] = []
        for suite in suites:
            self.register(suite)

    def register(self, suite: Suite) -> Suite:
        """Add ``suite`` (last); its params section is validated under ``eval.<section>`` from now on."""
        from tunegate.params import EvalParams, register_eval_section

        problems = []
        for other in self._suites:
            if other.name == suite.name or other.section == suite.section:
                problems.append(f"suite {other.name!r} already has the name or section {suite.section!r}")
            taken = {m.name for m in other.metrics} & {m.name for m in suite.metrics}
            if taken:
                problems.append(f"suite {other.name!r} already has the metric(s) {', '.join(sorted(taken))}")
        unknown_rows = set(suite.report_rows) - {m.name for m in suite.metrics}
        if unknown_rows:
            problems.append(f"report rows {', '.join(sorted(unknown_rows))} are not its metrics")
        if problems:
            raise ValueError(f"cannot register suite {suite.name!r}: " + "; ".join(problems))
        if suite.section not in EvalParams.model_fields:
            if not (isinstance(suite.params, type) and issubclass(suite.params, BaseModel)):
                raise ValueError(f"suite {suite.name!r}: its params section needs a pydantic model, not {suite.params!r}")
            register_eval_section(suite.section, suite.params)
        self._suites.append(suite)
        return suite

    def unregister(self, name: str) -> None:
        """Remove the suite ``name`` (and its params section, unless EvalParams declares it)."""
        from tunegate.params import EvalParams, unregister_eval_section

        suite = self.get(name)
        if suite is None:
            return
        self._suites.remove(suite)
        if suite.section not in EvalParams.model_fields:
            unregister_eval_section(suite.section)

    @contextlib.contextmanager
    def registered(self, suite: Suite) -> Iterator[Suite]:
        """``suite`` registered for the duration of the block (tests)."""
        self.register(suite)
        try:
            yield suite
        finally:
            self.unregister(suite.name)

    def suites(self) -> tuple[Suite, ...]:
        return tuple(self._suites)

    def get(self, name: str) -> Suite | None:
        return next((s for s in self._suites if s.name == name), None)

    def suite_of(self, metric: str) -> Suite | None:
        """The suite that computes ``metric`` (None: no registered suite does)."""
        return next((s for s in self._suites if any(m.name == metric for m in s.metrics)), None)

    def metric(self, name: str) -> Metric | None:
        suite = self.suite_of(name)
        return next(m for m in suite.metrics if m.name == name) if suite is not None else None

    def metric_names(self) -> list[str]:
        return [m.name for s in self._suites for m in s.metrics]

    def higher_is_better(self, metric: str) -> bool:
        """The metric's direction (an unknown metric: higher is better)."""
        found = self.metric(metric)
        return found.higher_is_better if found is not None else True

    def unknown_metrics(self, names: list[str]) -> list[str]:
        """The names no registered suite computes, each once, in order."""
        known = set(self.metric_names())
        return list(dict.fromkeys(n for n in names if n not in known))
