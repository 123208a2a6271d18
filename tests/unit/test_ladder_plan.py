"""The ladder's plan: which cells a spec makes and the spec each cell runs (no training here), and the
mistakes `tlscale validate` refuses with exit 2."""
from __future__ import annotations

import pytest

from tests.conftest import write_spec
from tests.unit.cli_checks import expect_error, invoke
from tlscale.ladder.cells import plan, read_pool
from tlscale.spec.schema import JobSpec


def ladder_spec(tmp_path, train, dev, **ladder) -> dict:
    return {"task": "text_classification", "seed": 42, "output_dir": str(tmp_path / "ladder"),
            "model": {"name_or_path": "tiny:bert", "max_length": 48},
            "data": {"train_file": str(train), "eval_file": str(dev), "text_column": "sentence",
                     "label_column": "label", "labels": ["negative", "positive"], "limit": 120},
            "strategy": {"name": "full", "head_lr": 2e-3},
            "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "eval_every_steps": 5, "report_to": []},
            "fewshot": {"verbalizer": {"negative": ["a bad film"], "positive": ["a good film"]}},
            "ladder": {"methods": ["zero_shot", "linear_probe", "full",
                                   {"name": "lora", "label": "lora r4", "overrides": ["strategy.r=4"]}],
                       "budgets": [4, "all"], "seeds": [0, 1], "min_steps": 6, **ladder}}


def test_the_plan_makes_one_cell_per_method_budget_and_seed(tmp_path, small_sst2):
    spec = JobSpec.model_validate(ladder_spec(tmp_path, *small_sst2))
    pool = read_pool(spec)
    assert (pool.classes, pool.train_examples, pool.eval_examples) == (2, 120, 64)
    cells = plan(spec, pool, tmp_path / "ladder")
    assert [(c.method, c.budget, c.seed) for c in cells] == [
        ("zero_shot", 0, 0), ("linear_probe", 4, 0), ("linear_probe", 4, 1),  # few-shot methods: no "all" cell
        ("full", 4, 0), ("full", 4, 1), ("full", "all", 0), ("full", "all", 1),
        ("lora r4", 4, 0), ("lora r4", 4, 1), ("lora r4", "all", 0), ("lora r4", "all", 1)]
    by = {(c.method, c.budget, c.seed): c.spec for c in cells}
    small, whole = by[("full", 4, 1)], by[("full", "all", 1)]
    assert small["seed"] == 1 and small["data"]["seed"] == 42  # the run's seed draws, the spec's picks the pool
    assert small["data"]["per_class"] == 4 and whole["data"]["per_class"] is None
    assert small["training"]["epochs"] == 6 and whole["training"]["epochs"] == 1  # 1 step per epoch; 15 per epoch
    assert small["training"]["eval_every_steps"] is None and small["training"]["keep_best"] is False
    assert small["strategy"] == {"name": "full", "layer_lr_decay": None, "head_lr": 2e-3}
    assert by[("lora r4", 4, 0)]["strategy"]["r"] == 4 and "fewshot" not in small
    probe, zero = by[("linear_probe", 4, 1)], by[("zero_shot", 0, 0)]
    raw = ladder_spec(tmp_path, *small_sst2, methods=[{"name": "full", "budgets": [4]}, "lora"], budgets=[2, 4])
    spec = JobSpec.model_validate(raw)
    assert [(c.method, c.budget) for c in plan(spec, pool, tmp_path / "ladder") if c.seed == 0] == [
        ("full", 4), ("lora", 2), ("lora", 4)]  # a method's own budgets
    assert probe["fewshot"]["method"] == "linear_probe" and probe["fewshot"]["k"] == 4
    assert probe["fewshot"]["seeds"] == [1] and probe["seed"] == 42
    assert zero["fewshot"]["method"] == "zero_shot" and zero["fewshot"]["verbalizer"]["positive"] == ["a good film"]
    assert len({str(c.folder) for c in cells}) == len(cells)
    assert all(c.spec["output_dir"] == str(c.folder / "run") for c in cells)


def test_a_methods_nested_overrides_stay_in_its_own_cells(tmp_path, small_sst2):
    """data.augment.copies on "+ EDA" entries must not leak into the plain entries planned beside them (a
    shared nested dict once made both arms of a with/without comparison augmented)."""
    eda = ["data.augment.copies=4"]
    raw = ladder_spec(tmp_path, *small_sst2, methods=[
        "linear_probe", {"name": "linear_probe", "label": "probe + EDA", "overrides": [*eda, "fewshot.setfit.epochs=3"]},
        "full", {"name": "full", "label": "full + EDA", "overrides": eda}, "setfit"], budgets=[4], seeds=[0])
    cells = {c.method: c.spec for c in plan(JobSpec.model_validate(raw), read_pool(JobSpec.model_validate(raw)),
                                            tmp_path / "ladder")}
    copies = {m: JobSpec.model_validate(s).data.augment.copies for m, s in cells.items()}
    assert copies == {"linear_probe": 0, "probe + EDA": 4, "full": 0, "full + EDA": 4, "setfit": 0}
    assert JobSpec.model_validate(cells["setfit"]).fewshot.setfit.epochs != 3
    # min_steps 6 at batch 8: 8 examples are 1 step per epoch; with up to 4 variants each, 5 steps
    assert (cells["full"]["training"]["epochs"], cells["full + EDA"]["training"]["epochs"]) == (6, 2)


def test_prompt_cells_use_the_causal_lm_and_draw_demonstrations_from_the_budget(tmp_path, small_sst2):
    spec = JobSpec.model_validate(ladder_spec(tmp_path, *small_sst2, methods=["zero_shot", "prompt"],
                                              prompt_model="tiny:gpt2", prompt_k=2, budgets=[4, 8]))
    cells = plan(spec, read_pool(spec), tmp_path / "ladder")
    zero, prompt8 = cells[0].spec, cells[-1].spec
    assert zero["model"]["name_or_path"] == "tiny:gpt2" and zero["fewshot"]["method"] == "prompt"
    assert zero["fewshot"]["k"] == 0
    assert prompt8["fewshot"]["k"] == 2 and prompt8["fewshot"]["pool_per_class"] == 8
    assert prompt8["fewshot"]["selection"] == "knn"


@pytest.mark.parametrize("change, fragments", [
    ({"methods": ["prompt"]}, ["ladder.prompt_model"]),
    ({"methods": ["full", "full"]}, ["['full'] appear twice", "label"]),
    ({"methods": ["ful"]}, ["unknown ladder method 'ful'", "full"]),
    ({"budgets": [4, 0]}, ["ladder.budgets.1"]),
    ({"budgets": [4, 200]}, ["[200] labelled examples per class", "smallest class has"]),
    ({"methods": [{"name": "lora", "overrides": ["strategy.r=-1"]}]}, ["ladder.methods[0] (lora)", "strategy.r"]),
])
def test_ladder_mistakes_exit_2_naming_the_field(tmp_path, small_sst2, change, fragments):
    raw = ladder_spec(tmp_path, *small_sst2)
    raw["ladder"].update(change)
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", raw)], *fragments)


def test_zero_shot_needs_label_descriptions_or_a_causal_lm(tmp_path, small_sst2):
    raw = ladder_spec(tmp_path, *small_sst2)
    del raw["fewshot"]
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", raw)], "fewshot.verbalizer", "prompt_model")
    raw["ladder"]["methods"] = ["full"]
    code, output = invoke("validate", write_spec(tmp_path / "spec.yaml", raw))
    assert code == 0 and "ladder of 4 cells" in output, output


def test_a_ladder_never_takes_a_folder_of_other_files(tmp_path, small_sst2):
    raw = ladder_spec(tmp_path, *small_sst2)
    (tmp_path / "ladder").mkdir()
    (tmp_path / "ladder" / "notes.txt").write_text("mine")
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", raw)], "notes.txt", "ladder did not write")
    expect_error(["ladder", write_spec(tmp_path / "spec.yaml", raw)], "notes.txt")
    assert (tmp_path / "ladder" / "notes.txt").read_text() == "mine"


def test_the_recommendation_is_the_cheapest_within_a_point_and_zero_shot_competes_everywhere():
    from tlscale.ladder.report import Row, recommend, recommendation_line

    def row(method, budget, mean, seconds):
        return Row(method, budget, mean, 0.01, 3, seconds, 4000.0, 10, 900.0)

    rows = [row("zero_shot", 0, 0.718, 0.0), row("linear_probe", 8, 0.706, 0.3), row("setfit", 8, 0.698, 27),
            row("linear_probe", 32, 0.753, 1.2), row("setfit", 32, 0.773, 57), row("lora", 32, 0.765, 9),
            row("lora", "all", 0.851, 68), row("full", "all", 0.860, 82)]
    picks = {p["budget"]: p for p in recommend(rows)}
    assert picks[8]["method"] == "zero_shot"  # 8 labels per class do not beat describing the labels
    assert picks[32]["method"] == "lora" and picks[32]["best_method"] == "setfit"  # 0.765 is within 1 point
    assert picks["all"]["method"] == "lora"
    line = recommendation_line(list(picks.values()), "accuracy")
    assert "8/class: zero_shot" in line and "all labels: lora (accuracy 0.851, 68 s, best full 0.860)" in line


def self_training(train, **entry) -> list:
    return ["setfit", {"name": "full", "label": "self-trained", "teacher": "setfit",
                       "overrides": [f"distill.unlabeled_file={train}", "distill.select_per_class=10"], **entry}]


def test_a_student_cell_is_taught_by_its_teachers_cell_of_the_same_labelled_examples(tmp_path, small_sst2):
    from tlscale.data.classification import build_classification_data
    from tlscale.fewshot.methods import METHODS
    from tlscale.ladder.cells import planned_teacher

    raw = ladder_spec(tmp_path, *small_sst2, methods=self_training(small_sst2[0]), budgets=[4], seeds=[0, 1])
    spec = JobSpec.model_validate(raw)
    cells = plan(spec, read_pool(spec), tmp_path / "ladder")
    students = [c for c in cells if c.method == "self-trained"]
    assert [(c.teacher.method, c.teacher.budget, c.teacher.seed) for c in students] == [("setfit", 4, 0),
                                                                                         ("setfit", 4, 1)]
    assert all(c.spec["distill"]["teacher"] == [str(c.teacher.run_dir)] for c in students)
    assert all(c.spec["distill"]["select_per_class"] == 10 for c in students)
    # min_steps 6 at batch 8: 8 labelled + 20 selected texts are 4 steps an epoch (not 1)
    assert [c.spec["training"]["epochs"] for c in students] == [2, 2]
    assert all(c.teacher is None for c in cells if c.method == "setfit")
    student = students[1]  # the teacher fits on the very examples the student has labels for
    with planned_teacher(student):  # (its teacher has not run)
        labelled = build_classification_data(JobSpec.model_validate(student.spec).data, student.spec["seed"]).train
    method = METHODS.get("setfit")(JobSpec.model_validate(student.teacher.spec))
    texts, _, _, _ = method.training_examples(1)
    assert sorted(texts) == sorted(labelled.texts) and len(texts) == 8


@pytest.mark.parametrize("entry, ladder, fragments", [
    ({"teacher": "setfitt"}, {}, ["'self-trained' has teacher 'setfitt'", "another method (setfit, self-trained)"]),
    ({"teacher": "self-trained"}, {}, ["expected the label of another method"]),
    ({"name": "linear_probe"}, {}, ["the student must be a training method, not linear_probe"]),
    ({"budgets": [4, "all"]}, {}, ["ladder.methods[1] (self-trained).teacher", "no cell with all labelled examples"]),
    ({}, {"runner": "service", "server": "http://127.0.0.1:9"}, ["teachers run with runner local or ray"]),
])
def test_ladder_teacher_mistakes_exit_2(tmp_path, small_sst2, entry, ladder, fragments):
    raw = ladder_spec(tmp_path, *small_sst2, methods=self_training(small_sst2[0], **entry), budgets=[4], **ladder)
    expect_error(["validate", write_spec(tmp_path / "spec.yaml", raw)], *fragments)


def test_a_student_whose_teacher_failed_is_reported_not_run(tmp_path, small_sst2):
    from tlscale.ladder import _waves
    from tlscale.ladder.execute import TEACHER_FAILED

    raw = ladder_spec(tmp_path, *small_sst2, methods=self_training(small_sst2[0]), budgets=[4], seeds=[0])
    spec = JobSpec.model_validate(raw)
    teacher, student = plan(spec, read_pool(spec), tmp_path / "ladder")
    reported = []
    waves = _waves([teacher, student], lambda cell, outcome, retrying: reported.append((cell, outcome.returncode)))
    assert next(waves) == [teacher]  # it runs, and fails: no metrics.json
    assert next(waves) == [] and reported == [(student, TEACHER_FAILED)]
    assert "its teacher setfit k=4 seed 0 has no finished run" in (student.folder / "log.txt").read_text()
