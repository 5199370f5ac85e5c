"""Reading instruction-data files (JSON list or JSONL) into canonical records.

Every failure names the file, the record index and the rule broken; nothing
here raises a bare parser traceback. Mixing several sources applies each
source's ``weight`` (resampling, seeded) and ``max_records`` cap.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunegate.data.formats import FormatError, convert_record, prompt_keys


class DataError(ValueError):
    """Input data that breaks a rule; the message names file, record and rule."""


def data_error(path: Path | str, index: int | str, rule: str) -> DataError:
    return DataError(f"{path}: record {index}: {rule}")


@dataclass(frozen=True)
class SourceSpec:
    """What the loader needs of a source (params.SourceParams carries the same fields)."""

    path: Path
    name: str
    format: str = "auto"
    columns: dict[str, str] | None = None
    weight: float = 1.0
    max_records: int | None = None
    keep_label_false: bool = False


@dataclass
class LoadedSource:
    """One source file read: its name, path, md5, counts and canonical records (chat records or pairs)."""

    name: str
    path: str
    md5: str
    counts: dict[str, int]
    records: list[dict[str, Any]] = field(repr=False)


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n")
        raise data_error(path, line, f"not valid UTF-8 ({error.reason} at byte {error.start})") from None


def iter_raw_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (record index, parsed JSON value) from a JSON list or a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = _decode(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            # A JSON list has no per-record lines; count the records that parsed before the error.
            before = text[: error.pos].count("\n{") + (1 if stripped.startswith("[{") else 0)
            raise data_error(path, max(before - 1, 0), f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
        yield from enumerate(items)
        return
    for index, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            yield index, json.loads(line)
        except json.JSONDecodeError as error:
            raise data_error(path, index, f"not valid JSON ({error.msg})") from None


def load_source(spec: SourceSpec) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Canonical records of one source plus counts (read, converted, dropped by label)."""
    records: list[dict[str, Any]] = []
    counts = {"read": 0, "dropped_label_false": 0}
    for index, raw in iter_raw_records(spec.path):
        counts["read"] += 1
        try:
            converted = convert_record(
                raw, source_name=spec.name, file=str(spec.path), index=index, fmt=spec.format, columns=spec.columns
            )
        except FormatError as error:
            raise data_error(spec.path, index, error.rule) from None
        for record in converted:
            if record.get("label") is False and not spec.keep_label_false:
                # KTO-style data: a response labelled undesirable is not an SFT target.
                counts["dropped_label_false"] += 1
                continue
            records.append(record)
    counts["records"] = len(records)
    return records, counts


def mix(sources: list[tuple[SourceSpec, list[dict[str, Any]]]], seed: int) -> list[dict[str, Any]]:
    """Apply caps and weights per source; sources stay in order (the trainer shuffles, seeded).

    Keeping input order means "the later copy" of a duplicate is the later record in the files.
    """
    mixed: list[dict[str, Any]] = []
    for spec, records in sources:
        rng = random.Random(f"{seed}:{spec.name}")
        chosen = list(records)
        if spec.max_records is not None and len(chosen) > spec.max_records:
            chosen = rng.sample(chosen, spec.max_records)
        whole, fraction = divmod(spec.weight, 1.0)
        picked = chosen * int(whole)
        if fraction:
            picked += rng.sample(chosen, round(fraction * len(chosen)))
        position = {id(record): i for i, record in enumerate(records)}
        mixed.extend(sorted(picked, key=lambda record: position[id(record)]))
    return mixed


def split_eval(records: list[dict[str, Any]], fraction: float, seed: int,
               keys: list[str] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out ``fraction`` of the distinct prompts (seeded), so no prompt lands on both sides.

    ``keys``: each record's prompt key, when not a chat record's (``formats.prompt_keys``)."""
    keys = prompt_keys(records) if keys is None else keys
    unique = sorted(set(keys))
    random.Random(seed).shuffle(unique)
    n_eval = max(1, round(fraction * len(unique))) if unique else 0
    held = set(unique[:n_eval])
    train = [r for r, k in zip(records, keys) if k not in held]
    evaluation = [r for r, k in zip(records, keys) if k in held]
    return train, evaluation


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")


def write_split(out_dir: Path, train: list[dict[str, Any]], evaluation: list[dict[str, Any]]) -> tuple[Path, Path, str, str]:
    """``out_dir/train.jsonl`` and ``out_dir/eval.jsonl`` written canonically: (train path, eval path, their md5s)."""
    from tunegate.data.digest import file_md5

    train_path, eval_path = Path(out_dir) / "train.jsonl", Path(out_dir) / "eval.jsonl"
    write_jsonl(train_path, train)
    write_jsonl(eval_path, evaluation)
    return train_path, eval_path, file_md5(train_path), file_md5(eval_path)


def read_canonical(path: Path) -> list[dict[str, Any]]:
    """Read back a canonical JSONL file written by :func:`write_jsonl`."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
