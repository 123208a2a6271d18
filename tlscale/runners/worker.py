"""One process of a multi-process run (started by tlscale.runners.launch)."""
from __future__ import annotations

import argparse
import sys
import traceback

from tlscale.distributed.accelerate_setup import finish_worker
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
    code = 0
    try:
        from tlscale.spec import load_spec
        from tlscale.train import train

        train(load_spec(args.spec), resume=args.resume, stop_after_steps=args.stop_after_steps,
              show_progress=not args.no_progress, launched=True)
    except TlscaleError as exc:
        for message in exc.messages:
            print(f"error: {message}", file=sys.stderr)
        code = 2
    except BaseException:  # noqa: BLE001  (show the failing rank's error, then fail the whole run)
        traceback.print_exc()
        code = 1
    finish_worker(code)


if __name__ == "__main__":
    main()
