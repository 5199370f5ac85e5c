"""Reusing an earlier evaluation of the same model instead of evaluating it again.

Each retrain scores its baseline, usually the unchanged champion. An evaluation is reused only
when everything that decides its scores is the same; that is its key (:class:`EvalKey`):

- the model: a trained one by the artifact its run logged (``runs:/<run id>/tunegate_model``,
  what the registry's version downloads) plus the sha256 of its files (and, for an adapter, of
  its base model's files); the base model by its path, the sha256 of its files and the chat
  template params give it;
- the eval data: the md5 of the canonical eval file the run reads (``DataRef.eval_md5``, after
  validation drops records);
- the suites: a hash of ``params.eval`` and ``project.seed``, and the md5 of every eval file
  the suites read (``load_items_md5``);
- the code: a hash of the source of the evaluation: the code every suite shares (:data:`EVAL_CODE`,
  :func:`compute`), each registered suite's own sources (``Suite.sources``, from the registry, so a new
  suite cannot be forgotten here), a custom safety classifier's module; and the versions of the libraries
  it runs on (:data:`EVAL_LIBRARIES`).

Every evaluation a run logs (``evaluation/<role>.json``: metrics, per-example scores and
outputs, the key, the run that computed it) is tagged ``tunegate.eval_key.<role>`` with the
key's digest. A later run searches the experiment's finished runs for that digest, as candidate
(the champion's training run) or as baseline, checks the key recorded in the artifact and that
the stored metrics follow from the stored scores, and rebuilds the :class:`ModelEvaluation`. The
store is searched through :mod:`tunegate.adapters.mlflow` (:class:`RunStore`); nothing here talks to MLflow.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tunegate import tags as tag_names  # (tags(): this module's tags of one evaluation)
from tunegate.data.digest import file_digest
from tunegate.evaluation.suites import REGISTRY, ModelEvaluation

if TYPE_CHECKING:
    from tunegate.params import EvalParams, Params

# The modules whose code computes every evaluation, whichever suites run (paths under tunegate/): running
# the registered suites and comparing, generation and response loss, scores and statistics, the registry,
# text checks, prompt rendering and templates, model and tokenizer loading, reading the eval records, seeding.
# Each suite's own modules come from the registry (Suite.sources). Not in: params (its values are in the
# key), gate, report, summary (they use an evaluation, not make one).
EVAL_CODE: tuple[str, ...] = (
    "evaluation/suites.py", "evaluation/generation.py", "evaluation/scores.py", "evaluation/registry.py",
    "evaluation/stats.py", "data/checks.py", "data/tokenize.py", "data/templates.py", "tuning/modeling.py",
    "data/sources.py", "tuning/seeding.py",
)
# Distributions whose version can change scores: the numerics, tokenisation, adapters, ROUGE, regexes, language ids.
EVAL_LIBRARIES: tuple[str, ...] = ("torch", "transformers", "tokenizers", "peft", "safetensors", "rouge-score", "regex", "langdetect",
                                   "lm_eval", "datasets")

KEY_TAG = tag_names.EVAL_KEY_PREFIX  # + role: the key's digest
MODEL_TAG = tag_names.EVAL_MODEL_PREFIX  # + role: the model part of the key, readable
REUSED_TAG = tag_names.EVAL_REUSED_FROM_PREFIX  # + role: the run the evaluation was read from ("" when computed)
ROLES = ("candidate", "baseline", "base", "waiting")  # where an earlier evaluation of a model is: its own run first
# "base": the base model, evaluated beside a champion baseline for the gate's over-base rule; "waiting": the
# candidate waiting for review, which a new candidate must not be significantly worse than to replace it


# --- the key ------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class EvalKey:
    model: dict[str, Any]  # :func:`model_identity`
    eval_md5: str
    suites: str  # :func:`suites_fingerprint`
    code: str  # :func:`code_fingerprint`

    @property
    def digest(self) -> str:
        return _digest({"model": self.model, "eval_md5": self.eval_md5, "suites": self.suites, "code": self.code})

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "model": self.model, "eval_md5": self.eval_md5, "suites": self.suites, "code": self.code}

    def model_label(self) -> str:
        return str(self.model.get("uri") or self.model.get("path") or "?")


def make_key(params: Params, eval_md5: str, model_dir: str | Path | None, training_run: str | None) -> EvalKey:
    """The key of evaluating ``model_dir`` (None: the base model), trained by run ``training_run``,
    on the eval file with md5 ``eval_md5``, with ``params``; raises when one part cannot be known."""
    if not eval_md5:
        raise ValueError("the eval data has no md5")
    return EvalKey(
        model_identity(params, model_dir, training_run),
        eval_md5,
        suites_fingerprint(params),
        code_fingerprint(eval_code_sources(params.eval)),
    )


def model_identity(params: Params, model_dir: str | Path | None, training_run: str | None) -> dict[str, Any]:
    """What model is evaluated: the base model (path, files, chat template), or the model a run trained."""
    if model_dir is None:
        return {"kind": "base_model", **_base_identity(params.base_model_path()), "chat_template": params.model.chat_template}
    from tunegate.tuning.modeling import read_model_info

    if not training_run:
        raise ValueError(f"{model_dir}: a trained model needs the run that trained it")
    info = read_model_info(Path(model_dir))
    identity: dict[str, Any] = {
        "kind": "trained", "uri": f"runs:/{training_run}/tunegate_model", "files_sha256": tree_sha256(Path(model_dir)),
    }
    if info.method != "full":  # an adapter: its base model's weights are half of it
        identity["base_model"] = _base_identity(info.base_model)
    return identity


def _base_identity(source: str) -> dict[str, str]:
    path = Path(source)
    if not path.is_dir():  # a hub id: its snapshot in the local cache
        from tunegate.tuning.modeling import cached_snapshot, hf_cache_dir

        snapshot = cached_snapshot(source, hf_cache_dir())
        if snapshot is None:
            raise FileNotFoundError(f"base model {source!r} is neither a directory nor in the Hugging Face cache")
        path = snapshot
    return {"path": str(source), "files_sha256": tree_sha256(path, remember=True)}


def suites_fingerprint(params: Params) -> str:
    """The suites' configuration: ``params.eval`` (all of it, but the reuse switch, which it does not
    dump), the global seed, the md5 of every eval file the suites read."""
    from tunegate.evaluation.suites import load_items_md5

    return _digest({
        "eval": params.eval.model_dump(mode="json", exclude={"reuse_baseline"}),
        "seed": params.project.seed,
        "eval_files_md5": load_items_md5(params.eval),
    })


@functools.lru_cache(maxsize=1)
def _own_sources() -> tuple[tuple[str, bytes], ...]:
    """:data:`EVAL_CODE` and :func:`compute`, read once per process: a long-lived process keeps running
    the code it imported, whatever the files on disk say later."""
    import inspect

    package = Path(__file__).resolve().parents[1]
    sources = [(f"tunegate/{name}", (package / name).read_bytes()) for name in EVAL_CODE]
    return (*sources, ("tunegate.evaluation.cache.compute", inspect.getsource(compute).encode()))


@functools.lru_cache(maxsize=None)
def module_source(module: str) -> bytes:
    """The source file of ``module`` (an import name), read once per process (as :func:`_own_sources`)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise FileNotFoundError(f"no source file for module {module!r}")
    return Path(spec.origin).read_bytes()


def suite_sources() -> dict[str, bytes]:
    """``suite:<name>`` -> its metrics and params section, and ``suite:<name>:<module>`` -> the source of each
    module the suite names, for every registered suite in the registry's order."""
    sources: dict[str, bytes] = {}
    for suite in REGISTRY.suites():
        declared = {"section": suite.section, "metrics": [[m.name, m.higher_is_better] for m in suite.metrics]}
        sources[f"suite:{suite.name}"] = json.dumps(declared, sort_keys=True).encode()
        sources.update({f"suite:{suite.name}:{module}": module_source(module) for module in suite.sources})
    return sources


def eval_code_sources(eval_params: EvalParams | None = None) -> dict[str, bytes]:
    """name -> source of the code that computes an evaluation (see :data:`EVAL_CODE`, :func:`suite_sources`)."""
    sources = {**dict(_own_sources()), **suite_sources()}
    classifier = eval_params.safety.classifier if eval_params is not None and eval_params.safety.enabled else "patterns"
    if ":" in classifier:  # a team's own refusal classifier scores the safety suite
        import importlib.util

        module = classifier.split(":", 1)[0]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            raise FileNotFoundError(f"eval.safety.classifier {classifier!r}: no source file for module {module!r}")
        sources[f"classifier:{module}"] = Path(spec.origin).read_bytes()
    return sources


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    for name in EVAL_LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def code_fingerprint(sources: Mapping[str, bytes], versions: Mapping[str, str] | None = None) -> str:
    """sha256 over the evaluation's sources (by name) and library versions."""
    files = {name: hashlib.sha256(data).hexdigest() for name, data in sources.items()}
    return _digest({"sources": files, "libraries": dict(library_versions() if versions is None else versions)})


def tree_sha256(root: Path, remember: bool = False) -> str:
    """sha256 over the relative path and content of every file under ``root`` (links followed, hidden
    names such as ``.cache`` skipped). ``remember``: look each file's hash up by (path, size, mtime)
    in ``$TUNEGATE_HOME/cache/file_sha256.json`` first, for a base model's large and unchanging weights."""
    root = Path(root)
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise FileNotFoundError(f"{root}: no files")
    known = _hash_cache() if remember else {}
    entries = []
    for path in files:
        stat = path.stat()
        stamp = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if stamp not in known:
            known[stamp] = file_digest(path, "sha256")
        entries.append([path.relative_to(root).as_posix(), known[stamp]])
    if remember:
        _save_hash_cache(known)
    return _digest(entries)


def _hash_cache_path() -> Path:
    from tunegate.paths import tunegate_home

    return tunegate_home() / "cache" / "file_sha256.json"


def _hash_cache() -> dict[str, str]:
    try:
        data = json.loads(_hash_cache_path().read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_hash_cache(known: dict[str, str]) -> None:
    path = _hash_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known), encoding="utf-8")
        tmp.replace(path)  # atomic; a concurrent writer's entries may be lost and get hashed again
    except OSError:
        pass


# --- computing, storing and finding evaluations ---------------------------------------------


def compute(params: Params, eval_path: str | Path, model_dir: str | Path | None, progress: Callable[[str], None] | None = None) -> ModelEvaluation:
    """Evaluate one model on every enabled suite (``model_dir`` None: the base model with the
    template params name). Its source is part of the code fingerprint."""
    from tunegate.data.sources import read_canonical
    from tunegate.evaluation.suites import evaluate_suites
    from tunegate.tuning.modeling import load_base_model, load_saved_model, load_tokenizer
    from tunegate.tuning.seeding import seed_everything

    seed_everything(params.project.seed)
    if model_dir is None:
        model = load_base_model(params.base_model_path())
        tokenizer = load_tokenizer(params.base_model_path(), params.model.chat_template)
    else:
        model, tokenizer = load_saved_model(Path(model_dir))
    records = read_canonical(Path(eval_path))
    return evaluate_suites(model, tokenizer, records, params.eval, progress=progress)


@dataclass(frozen=True)
class EvaluationOutcome:
    """What the evaluate task returns: the evaluation and where it came from."""

    evaluation: ModelEvaluation
    key: EvalKey | None
    reused_from: str | None = None  # the run whose stored evaluation was read back; None: computed
    computed_in: str | None = None  # the run that computed it
    reason: str = ""  # why it was computed

    def provenance(self) -> dict[str, Any]:
        """For the summary and the report: ``{"reused": true, "from_run": ..., "key": ...}`` or
        ``{"reused": false, "key": ..., "reason": ...}``."""
        digest = self.key.digest if self.key is not None else None
        if self.reused_from:
            return {"reused": True, "from_run": self.reused_from, "computed_in": self.computed_in, "key": digest}
        return {"reused": False, "key": digest, "reason": self.reason}


def artifact(evaluation: ModelEvaluation, key: EvalKey | None, computed_in: str | None) -> dict[str, Any]:
    """``evaluation/<role>.json``: metrics, everything :meth:`ModelEvaluation.from_dict` rebuilds it from,
    the key it was stored under and the run that computed it."""
    return {
        "metrics": evaluation.summary(),
        **evaluation.to_dict(),
        "eval_key": key.to_dict() if key is not None else None,
        "computed_in": computed_in,
    }


def tags(role: str, key: EvalKey | None, reused_from: str | None) -> dict[str, str]:
    """The run's tags for its evaluation in ``role``; empty values clear those of an earlier attempt."""
    return {
        KEY_TAG + role: key.digest if key is not None else "",
        MODEL_TAG + role: key.model_label() if key is not None else "",
        REUSED_TAG + role: reused_from or "",
    }


@dataclass(frozen=True)
class Earlier:
    evaluation: ModelEvaluation
    run_id: str  # the run whose evaluation/<role>.json was read
    role: str  # as what that run evaluated the model
    computed_in: str


class RunStore(Protocol):
    """What finding a stored evaluation asks of the tracking store; :mod:`tunegate.adapters.mlflow` is one."""

    def finished_runs_tagged(self, experiment: str, tag: str, value: str, limit: int = 20) -> list[tuple[str, dict[str, str]]]:
        """(run id, tags) of the experiment's finished runs tagged ``tag`` = ``value``, newest first."""
        ...

    def read_json_artifact(self, run_id: str, path: str) -> Any:
        """A run's JSON artifact (raises when it is missing or not JSON)."""
        ...


def find_earlier(store: RunStore, experiment: str, key: EvalKey, exclude_run: str | None = None) -> tuple[Earlier | None, list[str]]:
    """The first finished run of ``experiment`` that evaluated the model under ``key`` and whose stored
    evaluation checks out, and why the others that matched did not; ``store``: the tracking store
    (``tunegate.adapters.mlflow``). Runs that computed the evaluation come before runs that read
    it back, newer before older. Raises when the store cannot be searched."""
    hits = []
    for role in ROLES:
        runs = store.finished_runs_tagged(experiment, KEY_TAG + role, key.digest, limit=20)
        hits += [(role, run_id, tags) for run_id, tags in runs if run_id != exclude_run]
    hits.sort(key=lambda hit: bool(hit[2].get(REUSED_TAG + hit[0])))  # stable: computed ones first
    problems = []
    for role, run_id, _ in hits:
        try:
            return read_stored(store, run_id, role, key), problems
        except Exception as error:  # anything wrong with one stored evaluation: try the next, then evaluate
            problems.append(f"the {role} evaluation of run {run_id}: {type(error).__name__}: {error}")
    return None, problems


def read_stored(store: RunStore, run_id: str, role: str, key: EvalKey) -> Earlier:
    """The evaluation run ``run_id`` stored for ``role`` (read from ``store``), after checking that it
    was stored under ``key`` and that its metrics follow from its scores (raises otherwise)."""
    data = store.read_json_artifact(run_id, f"evaluation/{role}.json")
    stored = data.get("eval_key")
    if stored != key.to_dict():
        raise ValueError(f"its recorded key {(stored or {}).get('digest', 'none')!r} is not {key.digest!r}")
    evaluation = ModelEvaluation.from_dict(data)
    if json.loads(json.dumps(evaluation.summary())) != data.get("metrics"):
        raise ValueError("its stored metrics do not follow from its stored scores")
    return Earlier(evaluation, run_id, role, str(data.get("computed_in") or run_id))


# --- what the evaluate task asks -------------------------------------------------------------------


def key_or_reason(params: Params, eval_md5: str, model_dir: str | Path | None, training_run: str | None) -> tuple[EvalKey | None, str]:
    """:func:`make_key`, or None and why not: without a key the model is evaluated and nothing is left for
    later runs to reuse."""
    try:
        return make_key(params, eval_md5, model_dir, training_run), ""
    except Exception as error:
        return None, f"no evaluation key ({type(error).__name__}: {error})"


def look_up(store: RunStore, params: Params, key: EvalKey, exclude_run: str | None) -> tuple[Earlier | None, str, list[str]]:
    """An earlier evaluation under ``key`` to read back (see :func:`find_earlier`), why there is none to
    reuse, and what was wrong with the ones that matched."""
    if not params.eval.reuse_baseline:
        return None, "reuse turned off (eval.reuse_baseline: false)", []
    try:
        earlier, problems = find_earlier(store, params.project.name, key, exclude_run=exclude_run)
    except Exception as error:
        earlier, problems = None, [f"searching the runs failed: {type(error).__name__}: {error}"]
    reason = "earlier evaluations unusable: " + "; ".join(problems) if problems else "no earlier evaluation with this key"
    return earlier, reason, problems


def metrics(role: str, evaluation: ModelEvaluation) -> dict[str, float]:
    """The flat MLflow metrics of an evaluation in ``role``: ``<role>_<metric>``, ``<role>_exact_match.<family>``, and
    ``<role>_<metric>.<category>`` for every other metric whose categories the report plots (capability: per task)."""
    summary = evaluation.summary()
    flat = {f"{role}_{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
    flat.update({f"{role}_exact_match.{family}": value for family, value in summary["per_family"].items()})
    for metric, categories in summary["by_category"].items():
        found = REGISTRY.metric(metric)
        if found is not None and found.plot_categories:
            flat.update({f"{role}_{metric}.{category}": value for category, value in categories.items()})
    return flat
