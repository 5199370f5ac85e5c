"""Building the canonical train/eval dataset of a run from the sources in params, and validating it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.data.digest import file_md5
from tunegate.data.sources import LoadedSource, SourceSpec, load_source, mix, split_eval
from tunegate.data.validation import ValidationReport, validate_dataset
from tunegate.params import Params, SourceParams, ValidationParams
from tunegate.paths import resolve_path


@dataclass
class CanonicalDataset:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    train_sources: list[LoadedSource]
    eval_sources: list[LoadedSource]

    def source_md5s(self) -> dict[str, str]:
        return {s.name: s.md5 for s in self.train_sources + self.eval_sources}

    def source_summary(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "path": s.path, "md5": s.md5, "split": split, **s.counts}
            for split, group in (("train", self.train_sources), ("eval", self.eval_sources))
            for s in group
        ]


def spec_of(source: SourceParams) -> SourceSpec:
    return SourceSpec(
        path=resolve_path(source.path),
        name=source.source_name(),
        format=source.format,
        columns=dict(source.columns),
        weight=source.weight,
        max_records=source.max_records,
        keep_label_false=source.keep_label_false,
    )


def load_sources(sources: list[SourceParams]) -> list[LoadedSource]:
    loaded = []
    for source in sources:
        spec = spec_of(source)
        records, counts = load_source(spec)
        loaded.append(LoadedSource(spec.name, str(spec.path), file_md5(spec.path), counts, records))
    return loaded


def build_dataset(params: Params) -> CanonicalDataset:
    """Read and convert every source, mix train sources, take eval sources or hold out a split."""
    seed = params.project.seed
    train_sources = load_sources(params.data.train)
    train = mix([(spec_of(p), s.records) for p, s in zip(params.data.train, train_sources)], seed)
    eval_sources = load_sources(params.data.eval)
    if eval_sources:
        evaluation = [r for s in eval_sources for r in s.records]
    else:
        train, evaluation = split_eval(train, params.data.eval_fraction, seed)
    return CanonicalDataset(train, evaluation, train_sources, eval_sources)


def eval_validation_params(params: ValidationParams) -> ValidationParams:
    """The eval split is checked for shape and hygiene, not for training-data policy.

    Over-long eval records are kept and reported (``max_length: drop`` becomes a warning there): dropping
    them would change what the frozen suites measure, a whole family's share at a small limit; a runaway
    record stays what its rule says."""
    rules = dict(params.rules)
    rules.update({"policy_coverage": "off", "refusal_share": "off", "min_records": "off"})
    if params.severity("max_length") == "drop":
        rules["max_length"] = "warning"
    return params.model_copy(update={"rules": rules, "coverage": []})


def validate_splits(
    params: Params,
    train: list[dict[str, Any]],
    evaluation: list[dict[str, Any]],
    tokenizer: Any | None,
    docs_dir: Path | None = None,
) -> tuple[ValidationReport, ValidationReport | None]:
    """Validate train (with the overlap check against eval) and eval, when there is one.

    Token lengths are counted through the chat template with ``tokenizer``."""
    from tunegate.data.checks import count_record_tokens

    max_length = params.validation.max_length or params.train.max_length
    reports = []
    for split, records, vparams, other in (
        ("train", train, params.validation, evaluation),
        ("eval", evaluation, eval_validation_params(params.validation), None),
    ):
        if split == "eval" and not records:
            reports.append(None)
            continue
        counts = count_record_tokens(tokenizer, records) if tokenizer is not None and records else None
        reports.append(
            validate_dataset(
                records,
                vparams,
                max_length=max_length,
                token_counts=counts,
                eval_records=other,
                split=split,
                docs_dir=docs_dir / split if docs_dir else None,
            )
        )
    return reports[0], reports[1]


def validate_canonical(params: Params, train: list[dict[str, Any]], evaluation: list[dict[str, Any]],
                       docs_dir: Path) -> tuple[ValidationReport, ValidationReport | None]:
    """:func:`validate_splits` of canonical records with the base model's tokenizer and template: what the
    flow's ``validate_data`` task runs, and the preflight's child ahead of it (tunegate.operations.validation_ahead)."""
    from tunegate.data.templates import load_tokenizer

    tokenizer = load_tokenizer(params.base_model_path(), params.model.chat_template)
    return validate_splits(params, train, evaluation, tokenizer, docs_dir=docs_dir)


def without(records: list[dict[str, Any]], ids: list[str]) -> list[dict[str, Any]]:
    drop = set(ids)
    return [r for r in records if str(r.get("id")) not in drop]
