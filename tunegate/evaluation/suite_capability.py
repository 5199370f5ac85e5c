"""The capability suite: what instruction tuning most often erodes (knowledge, commonsense, arithmetic, and
for the demo the TinyStories model's own English), measured by lm-evaluation-harness on local task files only.

Each task is an lm-eval task YAML (:mod:`tunegate.evaluation.capability_tasks` ships ``story_continuation``,
``piqa``, ``mmlu_redux`` and ``gsm8k``; a path names your own). lm-eval scores a seeded sample of each task
(``max_items``, stratified by subject where the documents have one) on the model in memory (``HFLM``, adapters
included) and its per-document scores become this suite's ``capability`` scores: key ``<task>/<doc id>``,
category the task, value the task's per-item metric (its first, e.g. ``acc``, or the one params name). So the
comparison with the baseline, the base model and the waiting candidate is the same paired bootstrap as every
other suite's, per task and overall, and the gate's ``capability_may_not_drop`` judges each task.

Nothing reaches a hub (:func:`offline`): ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` are set for the run and
``evaluate.load`` refuses with the task's name; the preflight (:func:`capability_problems`) refuses before the
flow starts a task whose dataset or metric would need a download.
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.evaluation.generation import Generated
from tunegate.evaluation.registry import Metric, Suite
from tunegate.evaluation.scores import ModelEvaluation, Score
from tunegate.params import CapabilitySuite, CapabilityTask, EvalParams
from tunegate.paths import environment, made_by_dvc_stage, resolve_path

# ``dataset_path`` values that read local files (datasets' packaged builders); anything else is a hub id
# unless it is a local directory.
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
METRIC = "capability"


class CapabilityTaskError(ValueError):
    """A capability task that cannot run offline as written: the message names the task, the file and the fix."""


@dataclass(frozen=True)
class LoadedTask:
    entry: CapabilityTask
    path: Path  # its YAML file
    config: dict[str, Any]  # as lm-eval reads it, local paths resolved

    @property
    def name(self) -> str:
        return str(self.config.get("task") or self.path.stem)


def task_file(entry: CapabilityTask) -> Path:
    """The YAML file of a task entry: a shipped task by name, else a path (relative to the repo root)."""
    from tunegate.evaluation.capability_tasks import shipped

    tasks = shipped()
    if entry.task in tasks:
        return tasks[entry.task]
    if not entry.task.endswith((".yaml", ".yml")):
        raise CapabilityTaskError(
            f"eval.capability.tasks: {entry.task!r} is neither a shipped task ({', '.join(tasks)}) nor the path of an "
            "lm-eval task YAML (.yaml)"
        )
    path = resolve_path(entry.task)
    if not path.is_file():
        raise CapabilityTaskError(f"eval.capability.tasks: {entry.task!r} does not exist (resolved to {path})")
    return path


def _resolve_files(files: Any) -> Any:
    """``data_files`` (a path, a list, or split -> path(s)) with each relative path resolved against the repo root."""
    if isinstance(files, str):
        return str(resolve_path(files))
    if isinstance(files, list):
        return [_resolve_files(f) for f in files]
    if isinstance(files, dict):
        return {split: _resolve_files(f) for split, f in files.items()}
    return files


def load_task(entry: CapabilityTask) -> LoadedTask:
    """Read a task's YAML as lm-eval does (``include``, ``!function``) and resolve its local data files."""
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's own reader of task YAML

    path = task_file(entry)
    try:
        config = dict(load_yaml(path))
    except Exception as error:
        raise CapabilityTaskError(f"capability task {entry.task!r}: {path} cannot be read as lm-eval task YAML: "
                                  f"{type(error).__name__}: {error}") from None
    kwargs = dict(config.get("dataset_kwargs") or {})
    if "data_files" in kwargs:
        kwargs["data_files"] = _resolve_files(kwargs["data_files"])
        config["dataset_kwargs"] = kwargs
    return LoadedTask(entry, path, config)


def task_problems(task: LoadedTask) -> list[str]:
    """Why a loaded task cannot run offline, one sentence each (empty: it can)."""
    import lm_eval.api.metrics  # noqa: F401  (fills the metric registry)
    from lm_eval.api.registry import metric_registry

    where, config, problems = f"capability task {task.name!r} ({task.path})", task.config, []
    if "task" not in config or "group" in config or isinstance(config.get("task"), list):
        problems.append(f"{where}: a group of tasks; name each task's YAML in eval.capability.tasks instead")
        return problems
    source = config.get("dataset_path")
    if config.get("custom_dataset") is None:
        if source is None:
            problems.append(f"{where}: no dataset_path; give dataset_path: json (or csv, parquet) with dataset_kwargs.data_files")
        elif source not in LOCAL_BUILDERS and not resolve_path(str(source)).is_dir():
            problems.append(f"{where}: dataset_path {source!r} is a Hugging Face hub dataset, which this run may not "
                            f"download; copy its files beside the YAML and give dataset_path: json with dataset_kwargs.data_files")
        elif source in LOCAL_BUILDERS:
            files = (config.get("dataset_kwargs") or {}).get("data_files")
            if not files:
                problems.append(f"{where}: dataset_path {source!r} needs dataset_kwargs.data_files (the local file(s))")
            else:
                flat = files.values() if isinstance(files, dict) else (files if isinstance(files, list) else [files])
                for value in flat:
                    for item in value if isinstance(value, list) else [value]:
                        glob = any(ch in str(item) for ch in "*?[")
                        if not glob and not Path(item).is_file() and not made_by_dvc_stage(Path(item)):
                            problems.append(f"{where}: data file {item} does not exist")
    for metric in config.get("metric_list") or []:
        name = metric.get("metric") if isinstance(metric, dict) else metric
        if not isinstance(name, str):
            problems.append(f"{where}: metric {name!r} is a function; name a metric lm-eval ships")
        elif (isinstance(metric, dict) and metric.get("hf_evaluate")) or name not in metric_registry:
            problems.append(f"{where}: metric {name!r} is not one lm-eval ships, so it would be downloaded with "
                            f"evaluate.load from the Hugging Face hub; use a metric lm-eval ships (acc, acc_norm, "
                            f"exact_match, f1, bleu, ...) or score it in process_results")
    chosen = task.entry.metric
    names = [m.get("metric") if isinstance(m, dict) else m for m in config.get("metric_list") or []]
    if chosen and names and chosen not in names:
        problems.append(f"{where}: eval.capability metric {chosen!r} is not one of its metrics ({', '.join(map(str, names))})")
    return problems


def capability_problems(params: EvalParams) -> list[str]:
    """The preflight's sentences about the capability tasks (none when the suite is off): a task that does not
    exist, cannot be read, or would need a download."""
    section: CapabilitySuite = params.capability
    if not section.enabled:
        return []
    if not section.tasks:
        return ["eval.capability.tasks: the suite is on but names no task; name a shipped task "
                "(story_continuation, piqa, mmlu_redux, gsm8k) or an lm-eval task YAML, or set enabled: false"]
    problems, names = [], []
    for entry in section.tasks:
        try:
            task = load_task(entry)
        except CapabilityTaskError as error:
            problems.append(str(error))
            continue
        problems += task_problems(task)
        names.append(task.name)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(f"eval.capability.tasks: the task name(s) {', '.join(twice)} appear twice")
    return problems


class OfflineRefusal(RuntimeError):
    """A capability task tried to download (a metric through ``evaluate.load``, a file from the hub)."""


@contextlib.contextmanager
def offline(task: str = "") -> Iterator[None]:
    """The block runs with the hub switched off for huggingface_hub and datasets, and ``evaluate.load``
    refused with one line naming ``task`` and the fix."""
    with environment({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}):
        import datasets
        import datasets.config
        import huggingface_hub.constants

        datasets.disable_progress_bars()
        patches = [(datasets.config, "HF_DATASETS_OFFLINE", True), (datasets.config, "HF_HUB_OFFLINE", True),
                   (huggingface_hub.constants, "HF_HUB_OFFLINE", True), *_quiet_progress()]
        try:
            import evaluate

            def refuse(path, *args, **kwargs):
                raise OfflineRefusal(f"capability task {task!r}: evaluate.load({path!r}) would download a metric from the "
                                     "Hugging Face hub; use a metric lm-eval ships or score it in process_results")

            patches.append((evaluate, "load", refuse))
        except ImportError:
            pass
        old = [(obj, name, getattr(obj, name, None)) for obj, name, _ in patches]
        for obj, name, value in patches:
            setattr(obj, name, value)
        try:
            yield
        finally:
            for obj, name, value in old:
                setattr(obj, name, value)


def _quiet_progress() -> list[tuple[Any, str, Any]]:
    """lm-eval's progress bars pass ``disable=`` themselves (so ``TQDM_DISABLE`` does not reach them): its modules'
    ``tqdm`` replaced by a silent one for the block; the suite's own progress line says what runs."""
    import importlib
    from functools import partial

    from tqdm import tqdm

    def silent(*args, **kwargs):
        kwargs["disable"] = True
        return tqdm(*args, **kwargs)

    out = []
    for name in ("lm_eval.models.huggingface", "lm_eval.api.model", "lm_eval.api.task"):
        module = importlib.import_module(name)
        if getattr(module, "tqdm", None) is tqdm:
            out.append((module, "tqdm", partial(silent)))
    return out


def sample_indices(docs: list[dict[str, Any]], max_items: int | None, seed: int, task: str, stratify: str | None) -> list[int]:
    """A seeded sample of ``max_items`` document indices (all when there are no more), stratified by the
    ``stratify`` field (default ``subject`` where the documents have one): each stratum gets its share, the
    remainder going to the largest strata first; sorted."""
    n = len(docs)
    if max_items is None or n <= max_items:
        return list(range(n))
    rng = random.Random(f"{seed}:{task}")
    field = stratify or ("subject" if docs and "subject" in docs[0] else None)
    if field is None:
        return sorted(rng.sample(range(n), max_items))
    strata: dict[str, list[int]] = defaultdict(list)
    for index, doc in enumerate(docs):
        strata[str(doc.get(field))].append(index)
    names = sorted(strata)
    quota = {s: max_items * len(strata[s]) // n for s in names}
    for s in sorted(names, key=lambda s: (-len(strata[s]), s))[: max_items - sum(quota.values())]:
        quota[s] += 1
    return sorted(i for s in names for i in rng.sample(strata[s], min(quota[s], len(strata[s]))))


def _lm(model, tokenizer, batch_size: int):
    """lm-eval's HFLM around the model in memory. HFLM ties the model's weights again, which a PEFT model
    whose lm_head is a trained module (``modules_to_save``) cannot take: skipped for the wrap, restored after."""
    from lm_eval.models.huggingface import HFLM

    model.tie_weights = lambda *args, **kwargs: None
    try:
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    finally:
        del model.tie_weights


def run_capability(model, tokenizer, records, params: EvalParams, result: ModelEvaluation, cache: Generated | None = None) -> None:
    """Every capability task on one model: per-document scores into ``result.scores["capability"]`` and one
    row per task (its lm-eval figures, sample size, file) into ``result.examples["capability"]``."""
    import logging

    section: CapabilitySuite = params.capability
    tasks = [load_task(entry) for entry in section.tasks]
    problems = [p for task in tasks for p in task_problems(task)]
    if problems:
        raise CapabilityTaskError("; ".join(problems))
    for name in ("lm-eval", "lm_eval"):  # its warnings about a model passed in memory are expected here
        logging.getLogger(name).setLevel(logging.ERROR)
    result.scores[METRIC] = []
    result.examples["capability"] = []
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    lm = _lm(model, tokenizer, section.batch_size)
    for task in tasks:
        with offline(task.name):
            manager = TaskManager(include_defaults=False)
            loaded = manager.load([task.config])["tasks"]
            task_object = loaded[task.name]
            docs = list(task_object.eval_docs)
            indices = sample_indices(docs, task.entry.max_items or section.max_items, params.seed, task.name, task.entry.stratify)
            out = evaluator.simple_evaluate(
                model=lm, tasks=[task_object], samples={task.name: indices}, num_fewshot=section.num_fewshot,
                bootstrap_iters=0, log_samples=True, verbosity="ERROR", task_manager=manager, random_seed=params.seed,
                numpy_random_seed=params.seed, torch_random_seed=params.seed, fewshot_random_seed=params.seed,
            )
        _collect(task, task_object, indices, out, result)


def _collect(task: LoadedTask, task_object, indices: list[int], out: dict[str, Any], result: ModelEvaluation) -> None:
    metrics = [m.get("metric") if isinstance(m, dict) else m for m in task.config.get("metric_list") or []]
    metric = task.entry.metric or (metrics[0] if metrics else None)
    samples = out["samples"][task.name]
    filters = [f["name"] for f in task.config.get("filter_list") or []] or ["none"]
    chosen_filter = task.entry.filter or filters[0]
    if metric is None:  # the output type's default metrics (multiple choice: acc)
        metric = next(k for k in samples[0] if k not in ("doc_id", "doc", "target", "arguments", "resps", "filtered_resps",
                                                          "filter", "metrics", "doc_hash", "prompt_hash", "target_hash"))
    scored = [s for s in samples if s.get("filter", "none") == chosen_filter]
    if not scored:
        raise CapabilityTaskError(f"capability task {task.name!r}: no filter named {chosen_filter!r}; its filters: {', '.join(filters)}")
    for sample in sorted(scored, key=lambda s: s["doc_id"]):
        result.scores[METRIC].append(Score(f"{task.name}/{sample['doc_id']}", task.name, float(sample[metric])))
    figures = {k.replace(",", " / "): float(v) for k, v in out["results"][task.name].items()
               if isinstance(v, (int, float)) and not k.startswith(("sample_len", "alias")) and "stderr" not in k}
    result.examples["capability"].append({
        "key": task.name, "category": task.name, "task": task.name, "metric": metric, "filter": chosen_filter,
        "items": len(scored), "of": len(task_object.eval_docs), "figures": figures, "file": str(task.path),
    })


def capability_sources(params: EvalParams) -> dict[str, str]:
    """md5 of each capability task's YAML and of the files it reads (``data_files``, ``metadata`` paths), by
    ``capability/<task>[/<file>]``: part of the evaluation's key and the lineage, like every eval file."""
    from tunegate.data.digest import file_md5

    if not params.capability.enabled:
        return {}
    out = {}
    for entry in params.capability.tasks:
        try:
            task = load_task(entry)
        except CapabilityTaskError:
            continue
        out[f"capability/{task.name}"] = file_md5(task.path)
        files = (task.config.get("dataset_kwargs") or {}).get("data_files")
        paths = list(files.values()) if isinstance(files, dict) else (files if isinstance(files, list) else [files] if files else [])
        for key, value in (task.config.get("metadata") or {}).items():
            if isinstance(value, str) and key != "version":
                paths.append(str(resolve_path(value)))
        for value in paths:
            path = Path(value)
            for file in sorted(path.glob("*")) if path.is_dir() else [path]:
                if file.is_file():
                    out[f"capability/{task.name}/{file.name}"] = file_md5(file)
    return out


SUITE = Suite(
    name="capability",
    section="capability",
    params=CapabilitySuite,
    metrics=(Metric(METRIC, plot_categories=True),),
    sources=(__name__, "tunegate.evaluation.capability_tasks.prepare"),
    run=run_capability,
    progress="capability (lm-evaluation-harness)",
    digests=capability_sources,
    problems=capability_problems,
    report_note="Capability is each lm-eval task's per-item score (acc for multiple choice, exact match for "
    "generated answers) on a seeded sample of the task; its categories are the tasks.",
)
