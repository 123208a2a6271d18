"""Spec loading: every shipped config validates, overrides apply, schema is JSON Schema."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import ROOT, tiny_spec, write_spec
from tlscale.cli import app
from tlscale.errors import ConfigError
from tlscale.spec import load_spec

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    for strategy in ("full", "feature-extraction", "partial", "gradual-unfreeze"):
        assert f"sst2-minilm-{strategy}" in names
    assert "tiny-smoke" in names


# Configs that start from an earlier run: without it, validate names what is missing.
TEACHER_MISSING = "distill.teacher: expected run folders, model folders or .jsonl files; found nothing at"
NEEDS_A_RUN = {"sst2-minilm-distill": TEACHER_MISSING, "sst2-minilm-self-train": TEACHER_MISSING,
               "sst2-minilm-self-train-select": TEACHER_MISSING,
               "sst2-minilm-ladder-from-imdb": "model.init_from: expected a run folder or a saved model folder",
               "sst2-minilm-from-imdb-fe": "model.init_from: expected a run folder or a saved model folder",
               "sst2-minilm-ladder-self-train": "model.init_from: expected a run folder or a saved model folder"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_validates_with_its_data(config, tmp_path, monkeypatch):
    if config.stem in NEEDS_A_RUN:
        monkeypatch.setenv("TLSCALE_RUNS", str(tmp_path))
        result = CliRunner().invoke(app, ["validate", str(config)])
        assert result.exit_code == 2 and NEEDS_A_RUN[config.stem] in result.output, result.output
        return
    result = CliRunner().invoke(app, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_overrides_are_typed_and_nested(tmp_path):
    spec = load_spec(ROOT / "configs" / "tiny-smoke.yaml",
                     ["training.epochs=3", "training.lr=0.002", "strategy.name=partial", "strategy.trainable_layers=1",
                      f"output_dir={tmp_path}"])
    assert spec.training.epochs == 3 and spec.training.lr == 0.002
    assert spec.strategy.name == "partial" and spec.strategy.trainable_layers == 1
    assert spec.output_dir == tmp_path


def test_env_expansion_with_default(tmp_path, monkeypatch):
    monkeypatch.setenv("TLSCALE_RUNS", str(tmp_path / "r"))
    spec = load_spec(ROOT / "configs" / "tiny-smoke.yaml")
    assert spec.output_dir == tmp_path / "r" / "tiny-smoke"
    monkeypatch.delenv("TLSCALE_RUNS")
    assert load_spec(ROOT / "configs" / "tiny-smoke.yaml").output_dir == Path("runs/tiny-smoke")


def test_spec_is_frozen(tmp_path, small_sst2):
    spec = load_spec(write_spec(tmp_path / "s.yaml", tiny_spec(tmp_path / "o", *small_sst2)))
    with pytest.raises(Exception):
        spec.training.epochs = 5


def test_all_errors_reported_at_once(tmp_path, small_sst2):
    raw = tiny_spec(tmp_path / "o", *small_sst2)
    raw["training"].update(epochs=-1, lr=0)
    raw["model"]["pooling"] = "sum"
    with pytest.raises(ConfigError) as info:
        load_spec(write_spec(tmp_path / "s.yaml", raw))
    assert len(info.value.messages) == 3


def test_schema_command_prints_json_schema(tmp_path):
    result = CliRunner().invoke(app, ["schema", "--output", str(tmp_path / "schema.json")])
    assert result.exit_code == 0, result.output
    schema = json.loads((tmp_path / "schema.json").read_text())
    assert {"model", "data", "strategy", "training", "eval", "output_dir"} <= set(schema["properties"])
    assert schema["$defs"]["TrainingSpec"]["additionalProperties"] is False
    # the tasks' own sections, from their options models; nothing else at the top level
    assert schema["properties"]["qa"]["$ref"] == "#/$defs/QaOptions" and "doc_stride" in schema["$defs"]["QaOptions"]["properties"]
    assert schema["properties"]["lm"]["$ref"] == "#/$defs/LMOptions" and schema["additionalProperties"] is False


def test_every_schema_property_has_a_description():
    """Editors show these as hover help; a new option without one fails here."""
    from tlscale.spec import json_schema

    schema = json_schema()
    missing = [f"{name}.{key}" for name, section in [("JobSpec", schema), *schema.get("$defs", {}).items()]
               for key, prop in section.get("properties", {}).items() if not prop.get("description")]
    assert not missing, f"give these a description: {missing}"
