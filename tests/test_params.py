from pathlib import Path

import pytest
import yaml

from tunegate.params import Params, ParamsError, apply_overrides, load_params

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILES = sorted((REPO / "params").rglob("*.yaml"))


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_params_file_loads_and_starts_with_its_command(path: Path):
    params = load_params(path)
    assert isinstance(params, Params)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and "tunegate" in first, "each params file begins with the command that runs it"


def test_there_is_a_params_file():
    assert (REPO / "params" / "demo.yaml") in PARAMS_FILES


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _demo_raw() -> dict:
    return yaml.safe_load((REPO / "params" / "demo.yaml").read_text())


def test_unknown_key_names_key_and_allowed_keys(tmp_path):
    raw = _demo_raw()
    raw["train"]["epoks"] = 3
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, raw))
    message = str(err.value)
    assert "train.epoks" in message and "unknown key" in message
    assert "epochs" in message and "learning_rate" in message
    assert "p.yaml" in message


def test_unknown_section_names_allowed_sections(tmp_path):
    raw = _demo_raw()
    raw["trian"] = {}
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, raw))
    assert "trian" in str(err.value) and "train" in str(err.value)


def test_bad_value_says_what_is_allowed(tmp_path):
    raw = _demo_raw()
    raw["train"]["method"] = "magic"
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, raw))
    assert "train.method" in str(err.value) and "'lora'" in str(err.value) and "magic" in str(err.value)


def test_overrides_apply_with_yaml_types():
    params = load_params(REPO / "params" / "demo.yaml", ["train.epochs=2", "train.target_modules=[q_proj, v_proj]"])
    assert params.train.epochs == 2
    assert params.train.target_modules == ["q_proj", "v_proj"]


def test_override_of_unknown_key_fails():
    with pytest.raises(ParamsError, match="train.nope"):
        load_params(REPO / "params" / "demo.yaml", ["train.nope=1"])


def test_malformed_override():
    with pytest.raises(ParamsError, match="section.key=value"):
        apply_overrides({}, ["train.epochs"])


def test_flat_has_every_leaf():
    flat = load_params(REPO / "params" / "demo.yaml").flat()
    assert flat["train.method"] == "lora"
    assert flat["model.registered_name"]
    assert all("." in key for key in flat)
