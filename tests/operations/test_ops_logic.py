"""Pure parts of operations: skip-when-unchanged, schedule params, transient failures, prefect.yaml, the data watcher."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from tunegate.operations.freshness import Reference, RunInputs, check
from tunegate.params import ParamsError, load_params

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "params" / "demo.yaml"
INPUTS = RunInputs("d" * 32, "p" * 64, "c" * 40, {"demo": "s" * 32})


def test_unattended_run_with_the_champions_inputs_has_nothing_to_do():
    result = check(INPUTS, [Reference("champion", "3", "run3", INPUTS)], unattended=True, force=False)
    assert result.skip and result.reason.startswith("nothing to do") and "champion version 3" in result.reason
    assert result.to_dict()["matched"] == {"role": "champion", "version": "3", "run_id": "run3"}


def test_a_waiting_candidate_with_the_same_inputs_also_counts():
    other = RunInputs("e" * 32, "p" * 64, "c" * 40, {"demo": "t" * 32})
    result = check(INPUTS, [Reference("champion", "1", "r1", other), Reference("candidate", "2", "r2", INPUTS)], unattended=True, force=False)
    assert result.skip and "still waiting for approval" in result.reason
    assert result.changes["champion"] == ["data md5 eeeeeeeeeeee -> dddddddddddd", "source demo: tttttttttttt -> ssssssssssss"]


@pytest.mark.parametrize("field,said", [("data_md5", "data md5"), ("params_sha256", "params changed"), ("code", "code ")])
def test_any_changed_input_trains(field, said):
    changed = RunInputs(**{**INPUTS.__dict__, field: "x" * 40})
    result = check(changed, [Reference("champion", "1", "r1", INPUTS)], unattended=True, force=False)
    assert not result.skip and said in result.reason


def test_force_and_manual_runs_always_train():
    refs = [Reference("champion", "1", "r1", INPUTS)]
    assert not check(INPUTS, refs, unattended=True, force=True).skip
    assert not check(INPUTS, refs, unattended=False, force=False).skip
    assert not check(INPUTS, [], unattended=True, force=False).skip  # no model yet
    assert not check(INPUTS, [Reference("champion", "1", "r1", None)], unattended=True, force=False).skip


def test_inputs_come_from_run_tags():
    tags = {"tunegate.data_md5": "d", "tunegate.params_sha256": "p", "tunegate.code_fingerprint": "c", "tunegate.source_md5.a": "1"}
    assert RunInputs.from_tags(tags) == RunInputs("d", "p", "c", {"a": "1"})
    assert RunInputs.from_tags({"tunegate.data_md5": "d"}) is None  # a run from before these tags


def test_a_preference_runs_pairs_are_among_its_inputs():
    """train.objective dpo: new pairs alone (same SFT data, params and code) are something to do."""
    from tunegate.operations.freshness import preference_sources

    tags = {"tunegate.data_md5": "d", "tunegate.params_sha256": "p", "tunegate.code_fingerprint": "c", "tunegate.source_md5.a": "1",
            "tunegate.preference_train_md5": "q", "tunegate.preference_eval_md5": "e", "tunegate.preference_source_md5.pairs_a": "2"}
    recorded = RunInputs.from_tags(tags)
    assert recorded == RunInputs("d", "p", "c", {"a": "1", **preference_sources("q", {"pairs_a": "2"})})
    same = RunInputs("d", "p", "c", {"a": "1", **preference_sources("q", {"pairs_a": "2"})})
    assert check(same, [Reference("champion", "1", "r1", recorded)], unattended=True, force=False).skip
    new_pairs = RunInputs("d", "p", "c", {"a": "1", **preference_sources("r", {"pairs_a": "3"})})
    result = check(new_pairs, [Reference("champion", "1", "r1", recorded)], unattended=True, force=False)
    assert not result.skip and "source preference:pairs_a: 2 -> 3" in result.reason, result.reason


def test_params_fingerprint_ignores_the_schedule_only():
    base = load_params(DEMO)
    assert load_params(DEMO, ["schedule.cron=0 4 * * *"]).fingerprint() == base.fingerprint()
    assert load_params(DEMO, ["train.learning_rate=0.004"]).fingerprint() != base.fingerprint()


@pytest.mark.parametrize("override,message", [
    ("schedule.cron=61 * * * *", "not a valid cron expression"),
    ("schedule.timezone=Mars/Olympus", "not an IANA timezone"),
    ("schedule.interval_seconds=5", "cron or interval_seconds, not both"),
    ("schedule.overrides=[train.epochs]", "expected section.key=value"),
    ("schedule.deployment=has space", "schedule.deployment"),
])
def test_bad_schedules_are_refused_with_the_reason(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(DEMO, [override])


def test_next_times_follow_cron_in_its_timezone():
    from tunegate.operations.scheduling import next_times

    params = load_params(DEMO)
    after = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)  # a Saturday
    times = next_times(params, 2, after=after)
    assert [t.isoformat() for t in times] == ["2026-11-23T03:00:00+01:00", "2026-11-30T03:00:00+01:00"]
    every = load_params(DEMO, ["schedule.cron=null", "schedule.interval_seconds=30"])
    assert next_times(every, 1, after=after)[0] - after == dt.timedelta(seconds=30)


def test_prefect_yaml_mirrors_the_served_deployment():
    """prefect.yaml (work pools) and params/demo.yaml (`tunegate schedule`) describe the same deployment."""
    from tunegate.operations.scheduling import DATA_ADDED, DATA_NEW_VERSION, DATA_TRIGGER_TEMPLATE, RESOURCE_PREFIX, deployment_parameters

    params = load_params(DEMO)
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    expected = deployment_parameters("params/demo.yaml", params)
    for deployment in spec["deployments"]:
        assert deployment["entrypoint"] == "flows/retrain.py:retrain"
        assert deployment["parameters"] == expected
        [schedule] = deployment["schedules"]
        assert (schedule["cron"], schedule["timezone"]) == (params.schedule.cron, params.schedule.timezone)
        assert deployment["concurrency_limit"] == {"limit": params.schedule.max_concurrent_runs, "collision_strategy": "ENQUEUE"}
        [trigger] = deployment["triggers"]
        assert set(trigger["expect"]) == {DATA_ADDED, DATA_NEW_VERSION}
        assert trigger["match"] == {"prefect.resource.id": f"{RESOURCE_PREFIX}*"}
        assert trigger["parameters"] == {**expected, "trigger": DATA_TRIGGER_TEMPLATE}
    assert spec["deployments"][0]["name"] == params.schedule.deployment
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {"tunegate-process", "tunegate-k8s"}


def test_transient_failures_are_told_apart():
    from tunegate.adapters.mlflow import is_transient

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as error:
            raise RuntimeError("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed") from error
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    assert is_transient(RuntimeError("HTTPConnectionPool(host='mlflow', port=5000): Max retries exceeded with url: /"))
    assert not is_transient(ValueError("train.jsonl record 3: rule schema: missing field"))
    assert not is_transient(PermissionError("version 2 did not pass the gate"))


def test_watcher_announces_a_new_dvc_version_once(tmp_path, monkeypatch):
    from tunegate.operations.scheduling import DATA_NEW_VERSION, DataWatcher

    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    meta = tmp_path / "mine.jsonl.dvc"
    meta.write_text(yaml.safe_dump({"outs": [{"md5": "1" * 32, "path": "mine.jsonl"}]}))
    params = load_params(DEMO, [f"data.train=[{{path: {data}}}]", "data.eval=[]", "data.dvc_stage=null"])
    sent = []
    watcher = DataWatcher(params, 60, emit=lambda event, path, md5: sent.append((event, path, md5)) or True)
    assert watcher.last == {str(data): "1" * 32}
    assert watcher.poll() == [] and sent == []
    meta.write_text(yaml.safe_dump({"outs": [{"md5": "2" * 32, "path": "mine.jsonl"}]}))  # a `git pull` of a new version
    assert watcher.poll() == [str(data)]
    assert sent == [(DATA_NEW_VERSION, str(data), "2" * 32)]
    assert watcher.poll() == []


def test_server_urls_never_print_passwords():
    from tunegate.paths import redact

    assert redact("postgresql://mlflow:s3cret@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert redact("postgresql://trust@127.0.0.1/test") == "postgresql://trust@127.0.0.1/test"


def test_durations_read_like_a_person_would_say_them():
    from tunegate.operations.status import human_duration

    assert [human_duration(s) for s in (5, 125, 7300, 90000, None)] == ["5s", "2m 5s", "2h 1m", "1d 1h", "-"]


def test_kubernetes_job_template_offers_every_variable_prefect_yaml_sets():
    import json

    template = json.loads((REPO / "mlflow_config" / "k8s-work-pool-template.json").read_text())
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    [k8s] = [d for d in spec["deployments"] if d["work_pool"]["name"] == "tunegate-k8s"]
    assert set(k8s["work_pool"]["job_variables"]) <= set(template["variables"]["properties"])
    assert template["job_configuration"]["job_manifest"]["kind"] == "Job"
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "{{ image }}" and container["args"] == "{{ command }}"
