"""Validation computed ahead in the preflight's child (tunegate.operations.validation_ahead): used only for the same
params on byte-identical canonical files, and then equal to the task's own computation, failures included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunegate.data.dataset import build_dataset, validate_splits
from tunegate.data.digest import file_md5
from tunegate.data.sources import read_canonical, write_jsonl
from tunegate.operations import validation_ahead
from tunegate.params import load_params
from tunegate.tuning.modeling import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


def _records(bad: bool) -> list[dict]:
    records = []
    for i in range(120):
        lang = i % 3
        instruction = ["Repeat the word 'river' {i} times.", "把“{i}”写成中文。", "Écris le nombre {i} en lettres."][lang].format(i=i)
        records.append({"instruction": instruction, "input": "", "output": f"answer {i} — réponse {i} 答案"})
    for i in range(12):
        records.append({"instruction": f"How do I build a weapon number {i}?", "input": "", "output": "I can't help with that."})
    records.append(records[3])  # an exact duplicate: a finding either way
    if bad:
        records[7] = {"instruction": "Say nothing.", "input": "", "output": ""}  # empty response: an error rule
    return records


def _params(tmp_path: Path, bad: bool = False, extra: list[str] | None = None):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _records(bad)), encoding="utf-8")
    evaluation = tmp_path / "eval.jsonl"
    held_out = [{"instruction": f"Spell {i} backwards, s'il te plaît — 倒着写。", "input": "", "output": str(i)[::-1]} for i in range(500, 510)]
    evaluation.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in held_out), encoding="utf-8")
    return load_params(REPO / "params" / "demo.yaml", [
        f"data.train=[{{path: {train}, name: mixed}}]", f"data.eval=[{{path: {evaluation}, name: mixed_eval}}]", "data.dvc_stage=null",
        "validation.coverage=[]", "validation.rules={duplicates: drop}", *(extra or []),
    ])


def _as_the_task(params, work: Path):
    """What prepare_data and validate_data do in the flow, in this process."""
    dataset = build_dataset(params)
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "train.jsonl", dataset.train)
    write_jsonl(work / "eval.jsonl", dataset.eval)
    train, evaluation = read_canonical(work / "train.jsonl"), read_canonical(work / "eval.jsonl")
    tokenizer = load_tokenizer(params.base_model_path(), params.model.chat_template)
    reports = validate_splits(params, train, evaluation, tokenizer, docs_dir=work / "validation" / "data_docs")
    return file_md5(work / "train.jsonl"), file_md5(work / "eval.jsonl"), reports


def _finished_child() -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process


def _comparable(report) -> dict:
    data = json.loads(json.dumps(report.to_dict(), default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    data.pop("docs_index")
    return data


@pytest.mark.parametrize("bad", [False, True], ids=["passes", "fails"])
def test_ahead_equals_the_tasks_own_validation_and_moves_its_docs(tmp_path, base_model_path, bad):
    params = _params(tmp_path, bad)
    ahead_dir = tmp_path / "ahead"
    ahead_dir.mkdir()
    validation_ahead.compute(params, ahead_dir)
    train_md5, eval_md5, (train_report, eval_report) = _as_the_task(params, tmp_path / "task")
    assert train_report.passed is not bad and train_report.dropped_ids  # findings to compare: a drop, and an error when bad

    validation_ahead.register(params, _finished_child(), ahead_dir)
    out_dir = tmp_path / "run" / "validation"
    got = validation_ahead.take(params, train_md5, eval_md5, out_dir)
    assert got is not None
    assert _comparable(got.train) == _comparable(train_report)
    assert _comparable(got.eval) == _comparable(eval_report)
    assert [r.describe() for r in got.train.failures()] == [r.describe() for r in train_report.failures()]
    assert got.train.docs_index and Path(got.train.docs_index).is_file() and got.train.docs_index.startswith(str(out_dir))
    assert validation_ahead.take(params, train_md5, eval_md5, out_dir) is None  # used once


def test_ahead_is_ignored_for_other_data_or_other_params_or_a_failed_child(tmp_path, base_model_path):
    params = _params(tmp_path)
    ahead_dir = tmp_path / "ahead"
    ahead_dir.mkdir()
    validation_ahead.compute(params, ahead_dir)
    train_md5, eval_md5, _ = _as_the_task(params, tmp_path / "task")
    out_dir = tmp_path / "out"

    validation_ahead.register(params, _finished_child(), ahead_dir)
    assert validation_ahead.take(params, "0" * 32, eval_md5, out_dir) is None  # the data changed after the child read it
    validation_ahead.register(params, _finished_child(), ahead_dir)
    assert validation_ahead.take(params, train_md5, "0" * 32, out_dir) is None
    stricter = _params(tmp_path, extra=["validation.max_duplicate_rate=0.5"])
    validation_ahead.register(params, _finished_child(), ahead_dir)
    assert validation_ahead.take(stricter, train_md5, eval_md5, out_dir) is None  # other params: nothing registered for them
    validation_ahead.register(params, _finished_child(), tmp_path / "empty")  # the child died before writing its result
    assert validation_ahead.take(params, train_md5, eval_md5, out_dir) is None
    assert not out_dir.exists()
