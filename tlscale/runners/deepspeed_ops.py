"""Compile DeepSpeed's CPU ops now rather than inside the first DeepSpeed run.

DeepSpeed ships its CPU ops as sources: the shared-memory collectives (every ZeRO run on CPU) and CPU Adam
(optimizer offload) compile on first use, 1-3 minutes here, with every rank of that first run waiting.
`python -m tlscale.runners.deepspeed_ops` (which `make setup` runs) builds them once into the folder the
runners use, with the same ninja, so no run pays for it.
"""
from __future__ import annotations

import os
import sys
import time

OPS = ("ShareMemCommBuilder", "CPUAdamBuilder")


def build_ops() -> list[tuple[str, float]]:
    from tlscale.runners.launch import clear_stale_build_locks, extensions_dir, op_build_env

    os.environ.update(op_build_env())
    clear_stale_build_locks(extensions_dir())
    from deepspeed.accelerator import get_accelerator

    built = []
    for name in OPS:
        start = time.monotonic()
        get_accelerator().create_op_builder(name).load(verbose=False)
        built.append((name, time.monotonic() - start))
    return built


def main() -> int:
    from tlscale.logs import setup_entry_point

    setup_entry_point()
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        print("DeepSpeed is not installed: no ops to build (pip install 'tlscale[deepspeed]')")
        return 0
    for name, seconds in build_ops():
        print(f"DeepSpeed op {name}: ready in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
