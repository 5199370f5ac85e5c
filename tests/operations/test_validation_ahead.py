"""Validation computed ahead in the preflight's child (tunegate.operations.validation_ahead): used only for the same
params on byte-identical canonical files, and then equal to the task's own computation, failures included; found
under the directory named by this process and the params, waited for while its child holds the lock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
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


def _ahead_of(params, computed: Path) -> Path:
    """What a passed preflight child of this process leaves for ``params``: its directory, the lock released."""
    directory = validation_ahead.directory_for(params)
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(computed, directory)
    return directory


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

    _ahead_of(params, ahead_dir)
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

    _ahead_of(params, ahead_dir)
    assert validation_ahead.take(params, "0" * 32, eval_md5, out_dir) is None  # the data changed after the child read it
    _ahead_of(params, ahead_dir)
    assert validation_ahead.take(params, train_md5, "0" * 32, out_dir) is None
    stricter = _params(tmp_path, extra=["validation.max_duplicate_rate=0.5"])
    directory = _ahead_of(params, ahead_dir)
    assert validation_ahead.take(stricter, train_md5, eval_md5, out_dir) is None  # other params: nothing there for them
    # the child died before writing its result (the kernel released its lock)
    shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / validation_ahead.BUSY).touch()
    assert validation_ahead.take(params, train_md5, eval_md5, out_dir) is None
    assert not out_dir.exists()
    assert not directory.exists()  # each look uses it up


def test_the_task_waits_for_a_child_that_still_validates_and_not_for_one_that_is_gone(tmp_path):
    """The child holds the busy lock while it validates: the task waits for it, and a killed child's lock is released
    by the kernel at once (no result: the task validates itself)."""
    directory = tmp_path / "ahead"
    writer = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from tunegate.operations import validation_ahead\n"
        "busy = validation_ahead.hold(Path(sys.argv[1]))\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "Path(sys.argv[1], 'validation.json').write_text(json.dumps({'params_key': 'k'}))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", writer, str(directory), "1.0"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout.readline().strip() == "locked"
    begin = time.monotonic()
    assert validation_ahead._wait_until_done(directory, timeout_s=30)
    assert time.monotonic() - begin > 0.5 and child.wait(timeout=30) == 0 and (directory / "validation.json").is_file()

    stuck = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path / "stuck"), "600"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert stuck.stdout.readline().strip() == "locked"
    assert not validation_ahead._wait_until_done(tmp_path / "stuck", timeout_s=0.3)
    stuck.kill()
    stuck.wait()
    assert validation_ahead._wait_until_done(tmp_path / "stuck", timeout_s=5)
