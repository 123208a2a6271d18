"""Run a spec on several local processes: torch's elastic launcher starts one worker per process,
and every worker runs the same training loop (tlscale.runners.worker)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tlscale.spec import JobSpec, dump_spec


def extensions_dir() -> str:
    """Where DeepSpeed compiles its CPU ops (comm, Adam) on first use: once per machine, shared by every
    runner. A compile killed halfway leaves a lock that makes later ones wait, so one place matters."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "tlscale" / "torch_extensions")


def launch_local(spec: JobSpec, nproc: int, resume: bool, stop_after_steps: int | None, show_progress: bool) -> int:
    """Returns the launcher's exit code: 0, 2 (a worker rejected its input) or the failing rank's code."""
    with tempfile.TemporaryDirectory(prefix="tlscale-launch-") as tmp:
        spec_file = Path(tmp) / "spec.yaml"
        spec_file.write_text(dump_spec(spec))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "--max-restarts=0", "-m", "tlscale.runners.worker", str(spec_file)]
        if resume:
            command.append("--resume")
        if stop_after_steps is not None:
            command += ["--stop-after-steps", str(stop_after_steps)]
        if not show_progress:
            command.append("--no-progress")
        threads = max(1, (os.cpu_count() or 1) // nproc)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        env["TORCH_EXTENSIONS_DIR"] = extensions_dir()
        return subprocess.run(command, env=env).returncode
