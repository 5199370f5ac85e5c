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
     ["data", "add"], ["audit", "verify"], ["audit", "log"]],
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
    assert {"model_name", "tracking_uri", "champion", "candidate", "runs"} <= set(data)
