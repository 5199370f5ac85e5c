"""`tunegate validate` on eleven kinds of bad input: non-zero exit, file + record + rule named."""

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_inputs import BAD_INPUTS  # noqa: E402

from tunegate.cli import app  # noqa: E402


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_validate_rejects(kind, tmp_path, base_model_path):
    train, evaluation, index, rule = BAD_INPUTS[kind](tmp_path)
    args = ["validate", str(train)] + (["--eval", str(evaluation)] if evaluation else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())  # rich may wrap long lines
    assert str(train) in text and f"record {index}" in text and rule in text, text[-2000:]
    assert "Traceback" not in result.output


def test_validate_accepts_clean_data(tmp_path, base_model_path):
    from bad_inputs import _write, good_rows

    path = _write(tmp_path / "good.jsonl", good_rows())
    result = CliRunner().invoke(app, ["validate", str(path), "--report-dir", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "data_docs" / "train" / "index.html").is_file()
