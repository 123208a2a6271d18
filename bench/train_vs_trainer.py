"""tlscale's loop vs transformers.Trainer: same model (MiniLM), same SST-2 rows, same batch size,
same number of steps, full fine-tuning. Prints samples/s of each and the ratio.

    .venv/bin/python bench/train_vs_trainer.py [--rows 1600] [--batch-size 16] [--repeats 3] [--bf16] [--compile]
        [--no-reuse-cpu-memory] [--no-fast-dropout] [--output results.json]

Each run is a fresh process of its own (a tool's process-wide settings, such as tlscale's CPU allocator
tuning, stay with that tool), and the repeats alternate which tool goes first, so a warm-up or a noisy minute
does not always land on the same side; the figure is the median of the per-repeat ratios.
--compile: tlscale with training.compile (each block compiled in place) against Trainer with torch_compile=True
(the whole model), compile time included in both (the first steps wait for the compiler).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import sst2_spec, trainer_run


def one_side(args) -> tuple[float, float]:
    """This process runs one tool once: its samples/s over the run, and at its median step (the time from one
    step's end to the next's, batch making included), which a noisy minute on a shared machine moves far less."""
    import time

    from tlscale import train
    from tlscale.spec import spec_from_dict

    ends: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = sst2_spec(Path(tmp) / "run", {"name": "full"}, args.rows, 1, args.batch_size, 1e-4,
                        mixed_precision="bf16" if args.bf16 else "no")
        raw["training"].update(compile=args.compile, reuse_cpu_memory=not args.no_reuse_cpu_memory,
                               fast_dropout=not args.no_fast_dropout)
        spec = spec_from_dict(raw)
        if args.side == "trainer":
            from transformers import TrainerCallback

            class StepEnds(TrainerCallback):
                def on_step_end(self, *_, **__):
                    ends.append(time.perf_counter())

            speed = trainer_run(spec, freeze_backbone=False, compile=args.compile,
                                callbacks=(StepEnds(),))["train_samples_per_second"]
        else:
            import tlscale.training.loop as loop

            step = loop.step

            def timed_step(*a, **k):
                step(*a, **k)
                ends.append(time.perf_counter())

            loop.step = timed_step
            speed = train(spec, show_progress=False).metrics["train_samples_per_s"]
    median_step = statistics.median(b - a for a, b in zip(ends, ends[1:]))
    return speed, args.batch_size / median_step


def in_fresh_process(side: str, argv: list[str]) -> tuple[float, float]:
    result = subprocess.run([sys.executable, __file__, "--side", side, *argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the {side} run failed:\n{result.stderr[-3000:]}")
    run, step = result.stdout.strip().splitlines()[-1].split()
    return float(run), float(step)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both")
    parser.add_argument("--compile", action="store_true", help="torch.compile on both")
    parser.add_argument("--no-reuse-cpu-memory", action="store_true",
                        help="tlscale with training.reuse_cpu_memory=false (glibc's default allocator behaviour)")
    parser.add_argument("--no-fast-dropout", action="store_true",
                        help="tlscale with training.fast_dropout=false (torch's own CPU dropout masks)")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    parser.add_argument("--side", choices=["tlscale", "trainer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(*one_side(args))
        return
    argv = [f"--rows={args.rows}", f"--batch-size={args.batch_size}"] + [
        flag for flag, on in (("--bf16", args.bf16), ("--compile", args.compile),
                              ("--no-reuse-cpu-memory", args.no_reuse_cpu_memory),
                              ("--no-fast-dropout", args.no_fast_dropout)) if on]
    pairs = []
    for repeat in range(args.repeats):
        order = ["trainer", "tlscale"] if repeat % 2 == 0 else ["tlscale", "trainer"]
        speed = {side: in_fresh_process(side, argv) for side in order}
        (ours, ours_step), (theirs, theirs_step) = speed["tlscale"], speed["trainer"]
        pairs.append({"tlscale": round(ours, 1), "trainer": round(theirs, 1), "ratio": round(ours / theirs, 3),
                      "tlscale_median_step": round(ours_step, 1), "trainer_median_step": round(theirs_step, 1),
                      "ratio_median_step": round(ours_step / theirs_step, 3), "first": order[0]})
        print(f"repeat {repeat}: tlscale {ours:.1f}, Trainer {theirs:.1f} samples/s, ratio {ours / theirs:.2f}; "
              f"at the median step {ours_step:.1f} vs {theirs_step:.1f}, {ours_step / theirs_step:.2f}", flush=True)
    ratio = statistics.median(p["ratio"] for p in pairs)
    steps = -(-args.rows // args.batch_size)
    extras = [text for text, on in ((", bf16 autocast", args.bf16), (", torch.compile", args.compile),
                                    (", tlscale without reuse_cpu_memory", args.no_reuse_cpu_memory),
                                    (", tlscale with torch's dropout masks", args.no_fast_dropout)) if on]
    print(f"\nfull fine-tuning, MiniLM, {args.rows} SST-2 rows, batch {args.batch_size}, {steps} steps, "
          f"group_by_length on both{''.join(extras)}, {args.repeats} repeats, each run in a fresh process")
    print(f"  tlscale              {statistics.median(p['tlscale'] for p in pairs):8.1f} samples/s (median)")
    print(f"  transformers.Trainer {statistics.median(p['trainer'] for p in pairs):8.1f} samples/s (median)")
    print(f"  ratio tlscale/Trainer = {ratio:.2f} (median of {[p['ratio'] for p in pairs]})")
    step_ratio = statistics.median(p["ratio_median_step"] for p in pairs)
    print(f"  at each run's median step: {step_ratio:.2f} (median of {[p['ratio_median_step'] for p in pairs]})")
    if args.output:
        args.output.write_text(json.dumps({"rows": args.rows, "batch_size": args.batch_size, "steps": steps,
                                           "bf16": args.bf16, "compile": args.compile,
                                           "reuse_cpu_memory": not args.no_reuse_cpu_memory,
                                           "fast_dropout": not args.no_fast_dropout, "repeats": pairs,
                                           "median_ratio": ratio, "median_ratio_median_step": step_ratio},
                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
