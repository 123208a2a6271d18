"""One process of a multi-process run (started by tlscale.runners.launch): an entry point, so it owns
the process-wide settings (logging, signals) and how the process ends."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from tlscale.errors import TlscaleError


def main() -> None:
    parser = argparse.ArgumentParser(prog="tlscale-worker")
    parser.add_argument("spec")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stop-after-steps", type=int)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    from tlscale.runners.launch import die_with_launcher

    die_with_launcher()
    from tlscale.logs import QuietStream, run_log, setup_entry_point

    setup_entry_point()
    sys.stdout = QuietStream(sys.stdout)
    code = 0
    try:
        from tlscale.spec import load_spec
        from tlscale.training.checkpoints import latest_checkpoint
        from tlscale.training.loop import train
        from tlscale.training.run import Run, stop_on_signals
        from tlscale.training.run_dir import RunDir

        spec = load_spec(args.spec)
        folder = RunDir(spec.output_dir)
        run = Run(folder, checkpoint=latest_checkpoint(folder.path) if args.resume else None, resuming=args.resume,
                  stop_after_steps=args.stop_after_steps, show_progress=not args.no_progress, publishes=False)
        with run_log(folder.path), stop_on_signals(run.stop, interrupt_on_second=False):  # SIGKILL comes second
            train(spec, run)
    except TlscaleError as exc:
        for message in exc.messages:
            print(f"error: {message}", file=sys.stderr)
        code = 2
    except BaseException:  # noqa: BLE001  (show the failing rank's error, then fail the whole run)
        traceback.print_exc()
        code = 1
    logging.shutdown()
    finish_worker(code)


def finish_worker(exit_code: int) -> None:
    """End a launched worker without the gloo teardown crash (SIGABRT in ~1 of 5 runs otherwise):
    destroy the process group, flush, and leave without running interpreter finalizers."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.destroy_process_group()
        except Exception:  # noqa: BLE001  (a peer already gone must not turn success into failure)
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


if __name__ == "__main__":
    main()
