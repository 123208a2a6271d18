"""Entrypoint of a Ray job submitted by `tlscale submit`: run the spec it carries with the Ray runner."""
from __future__ import annotations

import os
import sys


def main() -> int:
    import yaml

    from tlscale.errors import TlscaleError
    from tlscale.logs import setup_entry_point
    from tlscale.runners import WorkerFailed, run_training
    from tlscale.runners.ray_jobs import SPEC_VARIABLE
    from tlscale.spec import spec_from_dict

    setup_entry_point()
    text = os.environ.get(SPEC_VARIABLE)
    if not text:
        print(f"error: {SPEC_VARIABLE} is not set; submit jobs with `tlscale submit`", file=sys.stderr)
        return 2
    try:
        spec = spec_from_dict(yaml.safe_load(text))
        result = run_training(spec, show_progress=False)
    except TlscaleError as exc:
        for message in exc.messages:
            print(f"error: {message}", file=sys.stderr)
        return 2
    except WorkerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if result is not None:
        from tlscale.tasks import build_task

        print(f"{build_task(spec).headline(result.metrics['eval'])} -> {result.output_dir / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
