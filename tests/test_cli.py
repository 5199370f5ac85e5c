import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tunegate.cli import app

HEAVY = ("torch", "transformers", "prefect", "mlflow", "great_expectations", "dvc", "peft", "trl")


def test_cli_import_pulls_in_no_heavy_library():
    """`tunegate --help` stays well under a second because nothing heavy is imported."""
    code = (
        "import sys, tunegate.cli\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    "command",
    [[], ["run"], ["status"], ["approve"], ["reject"], ["rollback"], ["lineage"], ["validate"],
     ["data", "add"], ["audit", "verify"], ["audit", "log"], ["server"], ["schedule"], ["trigger"], ["deploy"]],
)
def test_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bad_params_exit_non_zero_with_the_key(tmp_path):
    result = CliRunner().invoke(app, ["run", "--set", "train.method=magic"])
    assert result.exit_code == 2
    assert "train.method" in result.output


def test_status_json_on_empty_store():
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert {"model_name", "tracking_uri", "champion", "candidate", "runs", "schedule", "pending"} <= set(data)
    assert data["pending"] == [] and data["schedule"]["cron"] == "0 3 * * 1" and data["schedule"]["prefect"] is None


@pytest.mark.parametrize("command", [["schedule"], ["trigger", "--force"]])
def test_unattended_commands_need_a_server(command, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2
    assert "needs a Prefect server" in result.output and "tunegate server" in result.output


def test_data_add_outside_a_dvc_repo_names_it(tmp_path):
    data = tmp_path / "x.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    result = CliRunner().invoke(app, ["data", "add", "--repo", str(tmp_path), str(data)])
    assert result.exit_code == 1
    assert f"{tmp_path}: not a DVC repo" in result.output


def test_server_refuses_a_port_in_use(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["server", "--mlflow-port", str(port)])
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.output and "--mlflow-port" in result.output
