"""Two local processes over gloo: DDP and DeepSpeed ZeRO-2/3 (+ CPU offload) match one process,
save verified models, resume across world sizes, and a failing rank fails the run."""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests.conftest import DATA, run_cli, tiny_spec, write_spec

pytestmark = pytest.mark.distributed

STEPS = 6
# ZeRO-3 without offload is covered by lora-zero3 below and the MiniLM ZeRO-3 test; each case costs a launch.
BACKENDS = {
    "ddp": {"backend": "ddp"},
    "zero2": {"backend": "deepspeed", "zero_stage": 2},
    "zero3-offload": {"backend": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"},
}


def spec_for(tmp_path, train_file, dev_file, name, distributed=None, strategy=None, model="tiny:bert", **training):
    raw = tiny_spec(tmp_path / name, train_file, dev_file,
                    model={"name_or_path": model, "dropout": 0.0, "classifier_dropout": 0.0},  # same maths on 1 or 2 ranks
                    training={"epochs": 1, "max_steps": STEPS, "lr": 1e-4, "log_every_steps": 1, **training},
                    strategy=strategy or {"name": "full"}, distributed=distributed or {})
    return write_spec(tmp_path / f"{name}.yaml", raw)


def losses(run_dir, key="train/loss"):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows if key in row]


def train_ok(*args):
    result = run_cli("train", *map(str, args), "--no-progress")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory, request):
    """One-process run of the same global batch."""
    tmp = tmp_path_factory.mktemp("reference")
    rows = request.getfixturevalue("module_sst2")
    train_ok(spec_for(tmp, *rows, "one"))
    return tmp / "one", rows


@pytest.fixture(scope="module")
def module_sst2(sst2_files):
    return sst2_files


@pytest.mark.parametrize("name", list(BACKENDS))
def test_two_processes_match_one(tmp_path, reference, name, monkeypatch):
    one_dir, (train_file, dev_file) = reference
    monkeypatch.setenv("TLSCALE_CACHE", str(tmp_path / "cache"))  # empty: the launcher tokenizes, workers reuse
    result = train_ok(spec_for(tmp_path, train_file, dev_file, name, {**BACKENDS[name], "num_processes": 2}))
    console = result.stdout + result.stderr
    assert console.count("read, checked and tokenized once") == 2  # train and dev files, by the launcher only
    assert len(list((tmp_path / "cache" / "data").iterdir())) == 2
    assert "tokenized rows reused" in (tmp_path / name / "train.log").read_text()
    ours, theirs = losses(tmp_path / name), losses(one_dir)
    assert len(ours) == len(theirs) == STEPS
    assert ours[0] == pytest.approx(theirs[0], abs=1e-5)  # same examples, same weights: same first loss
    assert ours == pytest.approx(theirs, abs=2e-3)
    assert losses(tmp_path / name, "train/lr") == losses(one_dir, "train/lr")  # the schedule steps once per step
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    reference_metrics = json.loads((one_dir / "metrics.json").read_text())
    assert metrics["saved_model_verified"] is True
    assert metrics["distributed"]["num_processes"] == 2
    assert metrics["eval"]["num_examples"] == 64  # gathered across ranks, nothing dropped or doubled
    assert metrics["eval"]["loss"] == pytest.approx(reference_metrics["eval"]["loss"], abs=2e-3)
    assert metrics["eval"]["accuracy"] == pytest.approx(reference_metrics["eval"]["accuracy"], abs=0.05)


def test_distillation_under_two_process_zero2_matches_one_process(tmp_path, reference):
    """A one-layer student of the reference run (teacher outputs cached once, features matched), on the
    labelled rows plus unlabelled SST-2 text."""
    teacher, (train_file, dev_file) = reference
    unlabeled = tmp_path / "unlabeled.tsv"
    unlabeled.write_text("sentence\n" + "\n".join(line.rsplit("\t", 1)[0] for line in
                                                   (DATA / "sst2" / "train.tsv").read_text().splitlines()[2001:2097]))
    distill = {"teacher": [str(teacher)], "alpha": 0.5, "hidden_weight": 1.0, "unlabeled_file": str(unlabeled)}
    runs = {}
    for name, processes in (("one", 1), ("two", 2)):
        dist = {"backend": "deepspeed", "zero_stage": 2, "num_processes": 2} if processes == 2 else {}
        raw = tiny_spec(tmp_path / name, train_file, dev_file,
                        model={"name_or_path": "tiny:bert", "dropout": 0.0, "classifier_dropout": 0.0,
                               "keep_layers": [1]},
                        training={"epochs": 1, "max_steps": STEPS, "lr": 1e-3, "log_every_steps": 1},
                        distributed=dist, distill=distill)
        train_ok(write_spec(tmp_path / f"{name}.yaml", raw))
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-3)
    assert runs["two"]["saved_model_verified"] is True and runs["two"]["train_examples"] == runs["one"]["train_examples"] > 160
    assert runs["two"]["data"]["distill"]["teachers"][0]["cache"] == "reused"
    assert runs["two"]["eval"]["loss"] == pytest.approx(runs["one"]["eval"]["loss"], abs=2e-3)


def test_masked_lm_under_two_process_zero2_matches_one_process(tmp_path, module_sst2):
    """Masks come from (seed, epoch, example): the same on 1 or 2 ranks; every text's loss counts the same."""
    train_file, _ = module_sst2
    for name, dist in (("one", {}), ("two", {"backend": "deepspeed", "zero_stage": 2, "num_processes": 2})):
        raw = tiny_spec(tmp_path / name, train_file, task="masked_lm",
                        model={"name_or_path": "tiny:bert", "dropout": 0.0},
                        training={"epochs": 1, "max_steps": 4, "lr": 1e-3, "log_every_steps": 1},
                        distributed=dist)
        raw["data"] = {"train_file": str(train_file), "text_column": "sentence"}
        train_ok(write_spec(tmp_path / f"{name}.yaml", raw))
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-3)
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert two["saved_model_verified"] is True and two["eval"]["masked_tokens"] == one["eval"]["masked_tokens"]
    assert two["eval"]["loss"] == pytest.approx(one["eval"]["loss"], abs=2e-3)


# The PEFT x distribution matrix that runs (qlora with ZeRO-3 is refused by validation, tested below).
# One case per distinct path: the ZeRO-3 adapter gather, a k-bit base under ZeRO-2 with optimizer offload, and
# a k-bit base under DDP (plain ZeRO-2 and ZeRO-3 offload are the same paths with fewer or more options).
PEFT_RUNS = {
    "lora-zero3": ("lora", "tiny:gpt2", {"backend": "deepspeed", "zero_stage": 3}),
    "qlora-ddp": ("qlora", "tiny:llama", {"backend": "ddp"}),
    "qlora-zero2-offload": ("qlora", "tiny:llama", {"backend": "deepspeed", "zero_stage": 2, "offload_optimizer": "cpu"}),
}


@pytest.fixture(scope="module")
def peft_references(tmp_path_factory, module_sst2):
    tmp = tmp_path_factory.mktemp("peft-reference")
    for strategy, model in {("lora", "tiny:gpt2"), ("qlora", "tiny:llama")}:
        train_ok(spec_for(tmp, *module_sst2, strategy, strategy={"name": strategy, "r": 4, "lora_dropout": 0.0}, model=model, lr=1e-3))
    return tmp


@pytest.mark.parametrize("name", list(PEFT_RUNS))
def test_lora_and_qlora_on_two_processes_match_one(tmp_path, module_sst2, peft_references, name):
    from safetensors.torch import load_file

    strategy, model, distributed = PEFT_RUNS[name]
    train_ok(spec_for(tmp_path, *module_sst2, name, {**distributed, "num_processes": 2},
                      strategy={"name": strategy, "r": 4, "lora_dropout": 0.0}, model=model, lr=1e-3))
    ours, theirs = losses(tmp_path / name), losses(peft_references / strategy)
    assert ours == pytest.approx(theirs, abs=3e-3)
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["saved_model_verified"] is True  # merged model reloads with the in-memory loss
    adapter = load_file(str(tmp_path / name / "model-adapter" / "adapter_model.safetensors"))
    reference = load_file(str(peft_references / strategy / "model-adapter" / "adapter_model.safetensors"))
    assert adapter.keys() == reference.keys() and all(t.numel() > 0 for t in adapter.values())
    for key, tensor in adapter.items():  # the same trained adapter, not an empty or partial one
        relative = ((tensor - reference[key]).norm() / reference[key].norm()).item()
        print(f"{name} {key}: relative difference {relative:.3f}")
        assert relative < 0.2, key


def test_qlora_with_zero3_is_refused_by_validate(tmp_path, module_sst2):
    path = spec_for(tmp_path, *module_sst2, "q3", {"backend": "deepspeed", "zero_stage": 3, "num_processes": 2},
                    strategy={"name": "qlora"}, model="tiny:llama")
    result = run_cli("validate", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "strategy 'qlora' with ZeRO-3 is not supported" in result.stderr and "zero_stage 1 or 2" in result.stderr


@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_ddp_resume_across_world_sizes(tmp_path, reference, first, second):
    """Compared with the module's uninterrupted 1-process run (2 DDP ranks give its losses: tested above)."""
    one_dir, module_sst2 = reference
    path = spec_for(tmp_path, *module_sst2, "run", {"backend": "ddp", "num_processes": first}, save_every_steps=3)
    train_ok(path, "--stop-after-steps", "3")
    assert not (tmp_path / "run" / "model").exists()
    result = train_ok(path, "--resume", "--nproc", str(second))
    assert "resumed from" in result.stdout + result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["distributed"]["num_processes"] == second
    assert metrics["saved_model_verified"] is True
    straight = json.loads((one_dir / "metrics.json").read_text())
    assert metrics["eval"]["loss"] == pytest.approx(straight["eval"]["loss"], abs=2e-3)
    assert losses(tmp_path / "run")[-3:] == pytest.approx(losses(one_dir)[-3:], abs=2e-3)  # the resumed steps


def test_deepspeed_checkpoint_refuses_another_world_size(tmp_path, module_sst2):
    path = spec_for(tmp_path, *module_sst2, "run", {"backend": "deepspeed", "zero_stage": 2, "num_processes": 2},
                    save_every_steps=3)
    train_ok(path, "--stop-after-steps", "3")
    result = run_cli("train", str(path), "--resume", "--no-progress", "distributed.num_processes=1")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "resume only with the same backend and num_processes" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failing_rank_fails_the_run_with_its_error(tmp_path, module_sst2):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import tlscale.training.loop as loop\n"
        "    def broken(*a, **k):\n"
        "        raise RuntimeError('injected failure on rank 1')\n"
        "    loop.forward_backward = broken\n"
    )
    path = spec_for(tmp_path, *module_sst2, "run", {"backend": "ddp", "num_processes": 2})
    env_before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(hook) + (os.pathsep + env_before if env_before else "")
    try:
        result = run_cli("train", str(path), "--no-progress", timeout=300)
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = env_before
    assert result.returncode == 1
    assert "injected failure on rank 1" in result.stdout + result.stderr
    assert "training failed in a worker process" in result.stderr
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.slow
def test_minilm_zero3_two_processes_matches_one_process(tmp_path):
    """Real encoder, real data, the shipped recipe: 640 SST-2 rows at batch 32 (20 steps), dropout off so both
    do the same maths; ZeRO-3 on 2 processes reproduces the 1-process losses step by step and its scores on
    the 872 dev sentences. (The accuracy-only version, 2,000 rows to hold a 1-point bar, took 112 s.)"""
    from tests.conftest import ROOT

    config = ROOT / "configs" / "sst2-minilm-full.yaml"
    common = ["data.limit=640", "training.batch_size=32", "training.eval_every_steps=null", "training.log_every_steps=1",
              "model.dropout=0.0", "model.classifier_dropout=0.0", "--no-progress"]
    one = run_cli("train", str(config), f"output_dir={tmp_path / 'one'}", *common)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli("train", str(config), f"output_dir={tmp_path / 'zero3'}", "distributed.backend=deepspeed",
                  "distributed.zero_stage=3", "distributed.num_processes=2", *common)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "zero3" / "metrics.json").read_text())
    print(f"MiniLM 640 rows: 1 process {a['eval']['accuracy']:.4f}, ZeRO-3 x2 {b['eval']['accuracy']:.4f}")
    ours, theirs = losses(tmp_path / "zero3"), losses(tmp_path / "one")
    assert len(ours) == len(theirs) == 20 and ours == pytest.approx(theirs, abs=2e-3)
    assert b["saved_model_verified"] is True and b["eval"]["num_examples"] == a["eval"]["num_examples"] == 872
    assert b["eval"]["loss"] == pytest.approx(a["eval"]["loss"], abs=2e-3)
    assert abs(a["eval"]["accuracy"] - b["eval"]["accuracy"]) <= 0.005
    assert a["eval"]["accuracy"] > 0.65  # 20 steps already learn: not two copies of chance


def test_extractive_qa_under_two_process_deepspeed_matches_one_process(tmp_path):
    from tests.integration.test_qa_runs import qa_spec

    common = {"model": {"dropout": 0.0}, "training": {"max_steps": 4, "lr": 1e-3, "log_every_steps": 1}}
    one = write_spec(tmp_path / "one.yaml", qa_spec(tmp_path / "one", **common))
    two = write_spec(tmp_path / "two.yaml", qa_spec(tmp_path / "two", **common,
                                                   distributed={"backend": "deepspeed", "zero_stage": 2,
                                                                "num_processes": 2}))
    train_ok(one)
    train_ok(two)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-3)
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert b["saved_model_verified"] is True and b["eval"]["total"] == a["eval"]["total"] == 32
    assert b["eval"]["f1"] == pytest.approx(a["eval"]["f1"], abs=2.0)


def test_causal_lm_under_two_process_deepspeed_matches_one_process(tmp_path):
    """Per-rank losses are weighted by label tokens, so 2 ranks reproduce 1 process's token-mean loss."""
    from tests.integration.test_causal_lm_runs import lm_spec

    common = {"model": {"name_or_path": "tiny:gpt2", "max_length": 64, "dropout": 0.0},
              "training": {"max_steps": 4, "log_every_steps": 1}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = write_spec(tmp_path / "one.yaml", {**lm_spec(tmp_path / "a", "gpt2", False, **common)})
    two = write_spec(tmp_path / "two.yaml", {**lm_spec(tmp_path / "b", "gpt2", False, **common,
                                                       distributed={"backend": "deepspeed", "zero_stage": 2,
                                                                    "num_processes": 2})})
    train_ok(one)
    train_ok(two)
    assert losses(tmp_path / "b" / "run") == pytest.approx(losses(tmp_path / "a" / "run"), abs=2e-3)
    a = json.loads((tmp_path / "a" / "run" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())
    assert b["saved_model_verified"] is True and b["eval"]["tokens"] == a["eval"]["tokens"]
    assert b["eval"]["loss"] == pytest.approx(a["eval"]["loss"], abs=2e-3)


def test_multi_task_under_two_process_zero2_matches_one_process(tmp_path, module_sst2):
    """Batches hold one task on every rank; heads a step does not reach get zero gradients on every backend
    (ZeRO's flat partitions hold them), so 2 ranks take 1 process's steps."""
    from tests.integration.test_multi_task import mt_spec

    common = {"model": {"dropout": 0.0, "classifier_dropout": 0.0},
              "training": {"epochs": 1, "max_steps": 8, "log_every_steps": 1}}
    for name, dist in (("one", {}), ("two", {"backend": "deepspeed", "zero_stage": 2, "num_processes": 2})):
        train_ok(write_spec(tmp_path / f"{name}.yaml", mt_spec(tmp_path / name, *module_sst2, **common,
                                                               distributed=dist)))
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-3)
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert two["saved_model_verified"] is True and two["distributed"]["zero_stage"] == 2
    assert two["eval"]["sst2/loss"] == pytest.approx(one["eval"]["sst2/loss"], abs=2e-3)
    assert two["eval"]["xquad/f1"] == pytest.approx(one["eval"]["xquad/f1"], abs=1.0)
