"""Self-training with 16 labelled sentences per class (SST-2, real MiniLM): the few-shot SetFit baseline labels
the training file's texts, and a fresh MiniLM learns from its 32 labelled examples plus 20,000 unlabelled texts
through the teacher's soft labels (configs/sst2-minilm-self-train.yaml). Seeds 0-4, each drawing its own 16 per
class for both; teacher and student scored on the 872 dev sentences. The recipe was fixed before any run.

    .venv/bin/python bench/self_train_sst2.py [--runs runs/self-train] [--seeds 0 1 2 3 4]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import DATA, ROOT, seed_summary, tlscale_cli, train_config

TEACHER = ROOT / "configs" / "sst2-minilm-setfit.yaml"
STUDENT = ROOT / "configs" / "sst2-minilm-self-train.yaml"
RESULTS = ROOT / "bench" / "results-self-train-sst2.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "self-train")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        teacher_dir, labels = args.runs / f"teacher-seed{seed}", args.runs / f"teacher-seed{seed}.jsonl"
        started = time.perf_counter()
        if not labels.is_file():  # a rerun keeps the labels already made
            tlscale_cli("fewshot", str(TEACHER), f"fewshot.seeds=[{seed}]", f"output_dir={teacher_dir}",
                        "--overwrite")
            tlscale_cli("fewshot", str(TEACHER), f"fewshot.seeds=[{seed}]", f"output_dir={teacher_dir}",
                        "--label", str(DATA / "sst2" / "train.tsv"), "--output", str(labels))
        teacher_s = time.perf_counter() - started
        teacher = json.loads((teacher_dir / "metrics.json").read_text())["eval"]["accuracy"]
        student = train_config(STUDENT, f"output_dir={args.runs / f'student-seed{seed}'}", f"seed={seed}",
                               f"distill.teacher=[{labels}]")
        distill = student["data"]["distill"]
        rows.append({"seed": seed, "teacher_dev_accuracy": teacher, "student_dev_accuracy": student["eval"]["accuracy"],
                     "teacher_accuracy_on_its_32": distill["teacher_train_accuracy"],
                     "transfer_texts": student["train_examples"], "teacher_seconds": round(teacher_s, 1),
                     "student_train_seconds": student["train_runtime_s"]})
        print(rows[-1], flush=True)
    results = {"teacher": seed_summary([r["teacher_dev_accuracy"] for r in rows]),
               "student": seed_summary([r["student_dev_accuracy"] for r in rows]), "seeds": rows}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("teacher", "student")}, indent=2))


if __name__ == "__main__":
    main()
