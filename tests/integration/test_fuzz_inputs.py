"""Seeded fuzzing of specs and data files through the real commands.

Every case: `validate` exits 0 or 2 (never a traceback); a case that validates must then train (a few
steps of a tiny model) with exit 0 or 2, since validation is the gate; no file outside the run folder is
created, changed or removed. Bounded in time: the seeded cases run until the budget is spent."""
from __future__ import annotations

import copy
import json
import os
import random
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import ROOT, tiny_spec, write_spec
from tlscale.cli import app

BUDGET_S = float(os.environ.get("TLSCALE_FUZZ_BUDGET_S", "30"))
TRAINS_AT_MOST = {"data": 4, "spec": 8}  # validated cases that then train, per phase (a train takes seconds)

FIELDS = ["seed", "output_dir", "model.max_length", "model.pooling", "model.dropout", "data.limit", "data.eval_limit",
          "data.eval_fraction", "data.text_column", "data.label_column", "data.labels", "data.format",
          "strategy.name", "strategy.trainable_layers", "strategy.r", "strategy.layer_lr_decay", "strategy.head_lr",
          "training.lr", "training.epochs", "training.max_steps", "training.batch_size", "training.grad_accum_steps",
          "training.warmup_ratio", "training.max_grad_norm", "training.eval_every_steps",
          "training.save_every_steps", "training.keep_checkpoints", "training.log_every_steps", "eval.batch_size",
          "eval.calibration_bins", "training", "data"]
VALUES = [0, -1, 1, 2, 3, 7, 1e-3, 0.5, 0.99, 1.5, 1e10, -1e-5, float("inf"), float("nan"), 2 ** 70, True, False,
          None, "", "yes", "abc", "sentence", "label", "${TLSCALE_FUZZ_UNSET}", "ünïcode ✓", [], {}, ["a"],
          ["negative", "positive"], ["negative", "negative"], {"x": 1}, "lora", "partial", "feature_extraction",
          "mean", "tsv", "jsonl"]


def data_variants(rows: list[tuple[str, str]]) -> list[tuple[str, bytes]]:
    """(suffix, content) of a training file: clean, and broken in the ways real files are."""
    tsv = "sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in rows)
    jsonl = "".join(json.dumps({"sentence": s, "label": int(l)}) + "\n" for s, l in rows)
    long_text = " ".join(["word"] * 3000)
    return [
        (".tsv", tsv.encode()),
        (".tsv", b"\xef\xbb\xbf" + tsv.encode()),                                  # UTF-8 BOM
        (".tsv", tsv.replace("sentence\tlabel", "sentence\tsentence\tlabel", 1).encode()),
        (".tsv", tsv.replace("\t1\n", "\t0\n").encode()),                           # one class only
        (".tsv", (tsv + "\t1\n").encode()),                                         # empty text
        (".tsv", (tsv + f"{long_text}\t1\n").encode()),                             # longer than any model
        (".tsv", tsv.encode()[:40] + b"\xff\xfe" + tsv.encode()[40:]),              # not UTF-8
        (".tsv", (tsv + "a\tb\tc\n").encode()),                                     # ragged row
        (".tsv", b"sentence\tlabel\n"),                                             # header only
        (".jsonl", jsonl.encode()),
        (".jsonl", (jsonl + json.dumps({"sentence": ["a", "list"], "label": 1}) + "\n").encode()),
        (".jsonl", (jsonl + json.dumps({"sentence": {"an": "object"}, "label": 0}) + "\n").encode()),
        (".jsonl", (jsonl + json.dumps({"sentence": None, "label": 0}) + "\n").encode()),
        (".jsonl", (jsonl + "[1, 2]\n").encode()),
        (".jsonl", (jsonl + json.dumps({"sentence": "ok", "label": 7}) + "\n").encode()),
        (".json", json.dumps([{"sentence": s, "label": int(l)} for s, l in rows]).encode()),
    ]


def mutate(spec: dict, rng: random.Random) -> dict:
    spec = copy.deepcopy(spec)
    for _ in range(rng.choice((1, 1, 2, 3))):
        path = rng.choice(FIELDS).split(".")
        node = spec
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = copy.deepcopy(rng.choice(VALUES))
    return spec


def snapshot(folder: Path, skip: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and skip not in p.parents and p != skip}


def _run_folder(spec: dict, cwd: Path) -> Path:
    """Where the (mutated) spec's run may write: its output_dir, relative to the working folder."""
    output_dir = spec.get("output_dir")
    return (cwd / output_dir).resolve() if isinstance(output_dir, str) and output_dir.strip() else cwd / "no-run"


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        return 99, "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.output


@pytest.mark.slow
def test_fuzzed_specs_and_data_exit_0_or_2_and_touch_nothing_else(tmp_path, sst2_rows, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TLSCALE_FUZZ_UNSET", raising=False)
    rows = sst2_rows[:48]
    variants = data_variants(rows)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in sst2_rows[500:532]))
    root_before = sorted(os.listdir(ROOT))
    rng = random.Random(1234)
    started, cases, outcomes = time.monotonic(), 0, {0: 0, 2: 0}
    trained = {"data": 0, "spec": 0}
    while time.monotonic() - started < BUDGET_S:
        case = tmp_path / f"case{cases}"
        case.mkdir()
        suffix, content = variants[cases % len(variants)] if cases < len(variants) else rng.choice(variants)
        (case / f"train{suffix}").write_bytes(content)
        base = tiny_spec(case / "run", case / f"train{suffix}", tmp_path / "dev.tsv",
                         training={"epochs": 1, "max_steps": 3, "batch_size": 8, "report_to": []})
        spec = base if cases < len(variants) else mutate(base, rng)
        path = case / "spec.yaml"
        path.write_text(json.dumps(spec, allow_nan=True))  # JSON is YAML; inf/nan as YAML reads them
        path.write_text(path.read_text().replace("Infinity", ".inf").replace("NaN", ".nan"))
        run_dir = _run_folder(spec, tmp_path)
        before = snapshot(tmp_path, run_dir)
        code, output = invoke("validate", path)
        assert code in (0, 2) and "Traceback" not in output, f"validate, case {cases}:\n{path.read_text()}\n{output}"
        phase = "data" if cases < len(variants) else "spec"
        if code == 0 and trained[phase] < TRAINS_AT_MOST[phase] and _trains_in_process(spec):
            trained[phase] += 1
            code, output = invoke("train", path, "--no-progress")
            assert code in (0, 2) and "Traceback" not in output, \
                f"passed validate, then train failed, case {cases}:\n{path.read_text()}\n{output}"
        outcomes[code] += 1
        after = snapshot(tmp_path, run_dir)
        assert after == before, f"case {cases} touched files outside its run folder:\n{path.read_text()}"
        cases += 1
    print(f"fuzz: {cases} cases in {time.monotonic() - started:.0f} s, exit codes {outcomes}, trained {trained}")
    assert sorted(os.listdir(ROOT)) == root_before
    assert cases >= len(variants) and outcomes[0] and outcomes[2], (cases, outcomes)


def _trains_in_process(spec: dict) -> bool:
    """Multi-process specs are left to the distributed tests (they start processes)."""
    return spec.get("distributed", {}).get("backend", "none") == "none"
