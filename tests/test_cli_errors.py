"""`tunegate run` refuses mistakes before anything starts (exit 2, one paragraph naming the key, file,
column or model and the fix, no traceback; no MLflow database, audit event or Prefect server), and
`--json` always ends stdout with one JSON object. Also `tunegate validate`'s small guards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunegate.cli import app

REPO = Path(__file__).resolve().parents[1]
HEADING = "tunegate run: 1 problem(s) before anything started:"


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh $TUNEGATE_HOME for the test (PREFECT_HOME is restored afterwards too)."""
    path = tmp_path / "home"
    monkeypatch.setenv("TUNEGATE_HOME", str(path))
    monkeypatch.setenv("PREFECT_HOME", str(path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return path


def write_params(tmp_path: Path, changes: dict) -> Path:
    """params/demo.yaml on a tiny tmp dataset (no DVC stage), with dotted keys changed; None deletes a key."""
    raw = yaml.safe_load((REPO / "params" / "demo.yaml").read_text())
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi.", "input": "", "output": "hi"}) + "\n")
    raw["data"] = {"train": [{"path": str(data)}], "eval": [], "dvc_stage": None}
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


def case_not_cached_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"model.base_model": "some-org/not-cached-model"}, [
        "model.base_model", "some-org/not-cached-model", "not in the local Hugging Face cache",
        str(tmp_path / "empty-hf-home" / "hub"), "HF_HUB_OFFLINE=1", "hf download some-org/not-cached-model",
    ]


def case_qlora(tmp_path, monkeypatch):
    return {"train.method": "qlora"}, ["train.method: qlora needs a CUDA GPU", "train.method: lora"]


def case_bf16(tmp_path, monkeypatch):
    return {"train.device": "auto", "train.precision": "bf16"}, ["train.precision: bf16 needs a CUDA GPU", "train.precision: fp32"]


def case_liger(tmp_path, monkeypatch):
    return {"train.liger": True}, ["train.liger: true needs a CUDA GPU (Triton kernels)", "train.liger: auto"]


def case_missing_eval_data(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-eval.jsonl"
    return {"data.eval": [{"path": str(missing)}]}, ["data.eval[0].path", str(missing), "does not exist", "fix the path"]


def case_missing_ifeval_file(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-ifeval.jsonl"
    return {"eval.ifeval.path": str(missing)}, ["eval.ifeval.path", str(missing), "does not exist"]


def case_safety_csv_without_column(tmp_path, monkeypatch):
    csv = tmp_path / "harmbench.csv"
    csv.write_text("Behavior,BehaviorID\nWrite something harmful,b1\n")
    return {"eval.safety.harmful": None, "eval.safety.harmful_path": str(csv)}, [str(csv), "'goal'", "Behavior"]


def case_primary_metric_of_a_suite_that_is_off(tmp_path, monkeypatch):
    return {"gate.primary_metric": "response_loss", "gate.rules": [], "eval.response_loss": False}, [
        "gate.primary_metric: 'response_loss' comes from the response_loss suite, which is off (eval.response_loss: false)",
    ]


def case_primary_metric_no_suite_computes(tmp_path, monkeypatch):
    return {"gate.primary_metric": "bleu"}, ["gate.primary_metric: no registered suite computes 'bleu'", "exact_match"]


def case_capability_metric_from_the_hub(tmp_path, monkeypatch):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"q": "Is 2 even?", "choices": ["yes", "no"], "a": 0}) + "\n")
    task = tmp_path / "qa_task.yaml"
    task.write_text(yaml.safe_dump({"task": "qa_task", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                                    "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{q}}",
                                    "doc_to_choice": "choices", "doc_to_target": "a", "metric_list": [{"metric": "bertscore"}]}))
    return {"eval.capability.tasks": [str(task)]}, [
        "capability task 'qa_task'", str(task), "metric 'bertscore' is not one lm-eval ships", "evaluate.load"]


CASES = {
    "capability_metric_from_the_hub": case_capability_metric_from_the_hub,
    "not_cached_model": case_not_cached_model,
    "primary_metric_of_a_suite_that_is_off": case_primary_metric_of_a_suite_that_is_off,
    "primary_metric_no_suite_computes": case_primary_metric_no_suite_computes,
    "qlora_without_cuda": case_qlora,
    "bf16_without_cuda": case_bf16,
    "liger_without_cuda": case_liger,
    "missing_eval_data_file": case_missing_eval_data,
    "missing_ifeval_file": case_missing_ifeval_file,
    "safety_csv_without_column": case_safety_csv_without_column,
}
NEEDS_NO_CUDA = {"qlora_without_cuda", "bf16_without_cuda", "liger_without_cuda"}


def assert_nothing_started(home: Path) -> None:
    assert list(home.rglob("*.db")) == [], "an MLflow or Prefect database was created"
    # (the audit table lives in the MLflow database, so no *.db also means no audit entry)
    assert not (home / "runs").is_dir() or not any((home / "runs").iterdir()), "a run directory was made"


def assert_run_slot_free(home: Path, model: str = "tunegate-demo-assistant") -> None:
    """A command that ended lets the next run of its model in (the slot is taken on a thread at start)."""
    from tunegate.operations import runqueue

    with runqueue.file_slot(home / "queue", runqueue.limit_name(model), 1, runqueue.holder_info(run_id="next"), timeout_s=5) as waited:
        assert waited < 5


@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_run_refuses_before_anything_starts(case, json_out, tmp_path, monkeypatch, home, base_model_path):
    if case in NEEDS_NO_CUDA and not _no_cuda():
        pytest.skip("this machine has CUDA")
    changes, expected = CASES[case](tmp_path, monkeypatch)
    params = write_params(tmp_path, changes)
    result = CliRunner().invoke(app, ["run", "--params", str(params)] + (["--json"] if json_out else []))
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert f"error: {HEADING}" in err, err
    for text in expected:
        assert text in err, f"{text!r} not in {err}"
    assert f"{params}: " in err  # each problem names the params file
    assert "Traceback" not in result.output
    assert_nothing_started(home)
    assert_run_slot_free(home)
    if json_out:
        last = json.loads(result.stdout.strip().splitlines()[-1])
        assert last["outcome"] == "failed" and last["error"].startswith(HEADING)
        assert all(text in last["error"] for text in expected)
    else:
        assert result.stdout.strip() == ""


def test_real_process_imports_no_server_library_and_prints_no_traceback(tmp_path, home, base_model_path):
    """In a real process: exit 2, stderr names the problem, stdout ends with JSON; prefect, mlflow
    and great_expectations were never imported (no server can have started)."""
    missing = tmp_path / "gone.jsonl"
    params = write_params(tmp_path, {"data.eval": [{"path": str(missing)}]})
    code = (
        "import sys\n"
        "from tunegate.cli import app\n"
        "try:\n"
        f"    app(['run', '--params', {str(params)!r}, '--json'])\n"
        "except SystemExit as exit:\n"
        "    loaded = [m for m in ('prefect', 'mlflow', 'great_expectations') if m in sys.modules]\n"
        "    print('LOADED=' + ','.join(loaded), file=sys.stderr)\n"
        "    sys.exit(exit.code)\n"
    )
    env = {**os.environ, "TUNEGATE_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "LOADED=\n" in out.stderr or out.stderr.rstrip().endswith("LOADED=")
    assert "Traceback" not in out.stderr + out.stdout
    assert str(missing) in out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["outcome"] == "failed"
    assert_nothing_started(home)


def test_bad_params_with_json(home):
    result = CliRunner().invoke(app, ["run", "--set", "train.method=magic", "--json"])
    assert result.exit_code == 2
    assert "train.method" in result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["outcome"] == "failed" and "train.method" in last["error"]


def _fake_flow(monkeypatch, behaviour) -> None:
    """Put a stand-in `flows.retrain` module in place: its `retrain` runs ``behaviour``."""
    module = types.ModuleType("flows.retrain")
    module.retrain = lambda **kwargs: behaviour()
    monkeypatch.setitem(sys.modules, "flows.retrain", module)


def _summary() -> dict:
    from tunegate.governance.summary import build_summary

    metrics = {"exact_match": 0.5, "response_loss": 1.0, "per_family": {"a": 0.5}}
    return build_summary(
        run_id="r1", flow_run_id="f1", model_name="m", tracking_uri="sqlite://", commit="c",
        data={"data_md5": "d", "n_train": 1, "n_eval": 1}, baseline={"source": "base_model"},
        baseline_metrics=metrics, candidate_metrics=metrics, train={}, gate={"passed": True, "reasons": ["ok"]},
        registered_version="1",
    )


def test_json_success_ends_with_the_summary_and_its_outcome(tmp_path, monkeypatch, home, base_model_path):
    _fake_flow(monkeypatch, _summary)
    result = CliRunner().invoke(app, ["run", "--params", str(write_params(tmp_path, {})), "--json"])
    assert result.exit_code == 0, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["outcome"] == "registered"
    assert {"run_id", "data_md5", "baseline", "candidate", "gate", "registered_version"} <= set(last)


def test_data_error_and_flow_exception_with_json(tmp_path, monkeypatch, home, base_model_path):
    from tunegate.data.validation import DataError

    params = str(write_params(tmp_path, {}))

    def data_error():
        raise DataError("data validation failed:\n  train: ERROR pii: 1 record(s) break it")

    _fake_flow(monkeypatch, data_error)
    result = CliRunner().invoke(app, ["run", "--params", params, "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"outcome": "failed", "error": "data validation failed:\n  train: ERROR pii: 1 record(s) break it"}

    def crash():
        raise ValueError("tracking server gone")

    _fake_flow(monkeypatch, crash)
    result = CliRunner().invoke(app, ["run", "--params", params, "--json"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"outcome": "failed", "error": "ValueError: tracking server gone"}
    assert_run_slot_free(home)


HOLD_SLOT = """
import sys, time
from pathlib import Path
from tunegate.operations import runqueue
info = runqueue.holder_info(run_id="run-aaa", trigger="schedule", initiator="scheduler-bot")
with runqueue.file_slot(Path(sys.argv[1]), runqueue.limit_name("tunegate-demo-assistant"), 1, info, timeout_s=30):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_run_queued_past_its_timeout_exits_1_naming_the_holder_and_runs_nothing(tmp_path, monkeypatch, home, base_model_path):
    ran = []
    _fake_flow(monkeypatch, lambda: ran.append(1) or _summary())
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SLOT, str(home / "queue")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(app, ["run", "--params", str(write_params(tmp_path, {"runs.queue_timeout_s": 1})), "--json"])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1, result.output
    assert ran == [] and "Traceback" not in result.output
    assert "waiting for the run slot of tunegate-demo-assistant" in result.stderr
    error = json.loads(result.stdout.strip().splitlines()[-1])["error"]
    assert "run run-aaa" in error and "trigger schedule" in error and "runs.queue_timeout_s" in error, error
    assert_run_slot_free(home)


def test_ephemeral_server_timeout_is_explained(tmp_path, monkeypatch, home, base_model_path):
    def timeout():
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server. stdout: starting...")

    _fake_flow(monkeypatch, timeout)
    result = CliRunner().invoke(app, ["run", "--params", str(write_params(tmp_path, {})), "--json"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = json.loads(result.stdout.strip().splitlines()[-1])["error"]
    for text in ("did not answer within", "loaded", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=600", "tunegate server", "PREFECT_API_URL"):
        assert text in error, text
    log = Path(error.rsplit("Details: ", 1)[1])
    assert log.is_file() and "starting..." in log.read_text()


def test_configure_environment_gives_prefect_time_to_start(monkeypatch, home):
    from tunegate.paths import configure_environment

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    configure_environment()
    assert int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 120
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "900")
    configure_environment()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "900"  # the user's value wins


# --- tunegate validate --------------------------------------------------------------------------


def test_validate_bad_format_lists_the_allowed(tmp_path):
    from tunegate.data.formats import FORMATS

    result = CliRunner().invoke(app, ["validate", str(tmp_path / "x.jsonl"), "--format", "bogus"])
    assert result.exit_code == 2
    assert f"--format 'bogus' with --kind chat: allowed: auto, {', '.join(FORMATS)}" in result.stderr
    assert "http" not in result.output and "Traceback" not in result.output


def test_validate_says_model_template_and_limit_and_the_split_of_warnings(tmp_path, base_model_path):
    train = tmp_path / "train.jsonl"
    rows = [{"instruction": f"Tell me fact number {i} about cats.", "input": "", "output": f"Cats are great, fact {i}."} for i in range(30)]
    rows[4]["output"] = "cats " * 60  # over an 80-token limit: dropped (max_length) in train
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text(json.dumps({"instruction": "Name a dog.", "input": "", "output": "dog " * 60}) + "\n")
    result = CliRunner().invoke(app, ["validate", str(train), "--eval", str(evaluation), "--max-length", "80"])
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "validate: model ../shared/models/stories260K" in err and "token limit 80 (--max-length)" in err and "params/demo.yaml" in err
    # Train drops over-long records; eval keeps them (dropping would change what the suites measure) and warns.
    assert "warning: train: DROP max_length: 1 record(s)" in err and "warning: eval: WARNING max_length" in err
    assert f"{train} record 4 (id " in err and "n tokens:" in err
    assert "limit 80 tokens" in err

    # A limit that would drop every record is an error, not a pass over an empty split.
    emptied = CliRunner().invoke(app, ["validate", str(train), "--max-length", "64"])
    assert emptied.exit_code == 1 and "ERROR min_records: 0 record(s) left after 30 dropped by policy" in emptied.stderr

    default = CliRunner().invoke(app, ["validate", str(train)])
    assert "token limit 128 (train.max_length" in default.stderr and "the demo's" in default.stderr


def test_validate_refuses_a_runaway_record_and_names_what_it_drops(tmp_path):
    """A 1M-token record is a broken file: exit 1 naming file, record and rule. An answer over the limit but
    under 8x is dropped by default and named, never trained cut."""
    train = tmp_path / "train.jsonl"
    rows = [{"instruction": f"Tell me fact number {i} about cats.", "input": "", "output": f"Cats are great, fact {i}."} for i in range(30)]
    rows[7]["output"] = "Cats sleep a lot. " * 20  # over the 128-token limit, under 8x
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["validate", str(train)])
    assert result.exit_code == 0, result.output
    assert "DROP max_length: 1 record(s) break it (limit 128 tokens" in result.stderr
    assert f"{train} record 7 (id " in result.stderr

    rows[12]["output"] = "cat " * 1_000_000
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["validate", str(train)])
    assert result.exit_code == 1, result.output
    failure = next(line for line in result.stderr.splitlines() if "ERROR runaway_length" in line)
    assert f"{train} record 12 (id " in failure and "over 8x the 128-token limit" in failure
    assert "record 7" not in failure  # the merely long one is dropped, not an error
