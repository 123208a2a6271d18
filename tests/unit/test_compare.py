"""`tlscale compare`: figures side by side only when they were scored on the same evaluation set (the
metrics.json files here are written as tlscale writes them: a trained run, a few-shot run, a QA run)."""
from __future__ import annotations

import json

from tests.unit.cli_checks import expect_error, invoke


def run_folder(root, name: str, metrics: dict):
    folder = root / name
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def trained(accuracy: float, eval_examples: int) -> dict:
    return {"task": "text_classification", "strategy": "full", "model": "m", "train_examples": 800,
            "eval_examples": eval_examples, "eval": {"accuracy": accuracy, "f1_macro": accuracy,
                                                     "num_examples": eval_examples}}


def fewshot(accuracy: float, eval_examples: int) -> dict:  # means over seeds: no top-level eval_examples
    return {"task": "text_classification", "method": "setfit", "model": "m", "fewshot": {"k": 16},
            "eval": {"accuracy": accuracy, "accuracy_std": 0.02, "num_examples": float(eval_examples), "seeds": 2}}


def test_runs_scored_on_one_set_compare_and_show_its_size(tmp_path):
    a = run_folder(tmp_path, "full", trained(0.85, 872))
    b = run_folder(tmp_path, "setfit", fewshot(0.74, 872))
    code, output = invoke("compare", a, b)
    assert code == 0, output
    assert "eval n" in output and output.count("872") == 2 and "0.7400 ± 0.0200" in output
    assert "do not compare" not in output


def test_runs_scored_on_sets_of_different_sizes_are_refused_or_flagged(tmp_path):
    a = run_folder(tmp_path, "full", trained(0.85, 872))
    b = run_folder(tmp_path, "small", trained(0.90, 100))
    c = run_folder(tmp_path, "fewshot", fewshot(0.70, 200))
    expect_error(["compare", a, b, c], "different sizes", f"{a}: 872", f"{b}: 100", f"{c}: 200", "--allow-mixed-eval")
    code, output = invoke("compare", a, b, c, "--allow-mixed-eval")
    assert code == 0 and "different evaluation sets: these figures do not compare" in output, output
    qa = {"task": "extractive_qa", "strategy": "full", "eval": {"exact_match": 19.0, "f1": 31.0, "total": 364}}
    d, e = run_folder(tmp_path, "qa1", qa), run_folder(tmp_path, "qa2", {**qa, "eval": {**qa["eval"], "total": 400}})
    expect_error(["compare", d, e], "364", "400")  # QA runs say how many questions they were scored on


def test_runs_scored_on_different_examples_of_one_size_are_refused(tmp_path):
    a = run_folder(tmp_path, "a", {**trained(0.85, 872), "data": {"eval_sha256": "a" * 64}})
    b = run_folder(tmp_path, "b", {**trained(0.86, 872), "data": {"eval_sha256": "b" * 64}})
    c = run_folder(tmp_path, "c", {**trained(0.84, 872), "data": {"eval_sha256": "a" * 64}})
    expect_error(["compare", a, b], "different evaluation examples of the same size", "aaaaaaaaaaaa", "bbbbbbbbbbbb")
    assert invoke("compare", a, c)[0] == 0
    code, output = invoke("compare", a, b, "--allow-mixed-eval")
    assert code == 0 and "do not compare" in output


def test_compare_writes_csv_markdown_and_a_bar_chart_with_error_bars(tmp_path):
    import csv

    a = run_folder(tmp_path, "full", trained(0.85, 872))
    b = run_folder(tmp_path, "setfit", fewshot(0.74, 872))
    out = tmp_path / "report"
    code, output = invoke("compare", a, b, "--output", out)
    assert code == 0, output
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["accuracy"] for r in rows] == ["0.85", "0.74"] and rows[1]["accuracy_std"] == "0.02"
    assert rows[0]["accuracy_std"] == "" and rows[0]["eval_n"] == "872"
    table = (out / "compare.md").read_text()
    assert "| eval n | accuracy |" in table and "0.7400 ± 0.0200" in table
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    (a / "spec.yaml").write_text("task: text_classification\n")  # a run folder as tlscale leaves one
    expect_error(["compare", a, b, "--output", a], "--output")  # never into a run folder
