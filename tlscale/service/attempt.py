"""One attempt of a service job: `python -m tlscale.service.attempt JOB_DIR N [--resume]`.

Runs `tlscale train` (or `tlscale fewshot`, as JOB_DIR/command says) on the job's spec and writes its exit code to JOB_DIR/attempt-N.exit when it ends, so
a dispatcher that was restarted in between (even after a SIGKILL) still learns how the attempt ended. The
same command is a local process (in its own session, outliving the server) or a Ray job's entrypoint. A
`cancel` file in JOB_DIR, or SIGTERM, stops the run: tlscale checkpoints and exits.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    job_dir, number, resume = Path(argv[0]), int(argv[1]), "--resume" in argv[2:]
    with open(job_dir / f"attempt-{number}.log", "ab") as log:
        child = subprocess.Popen(tlscale_command(job_dir, resume), stdout=log, stderr=subprocess.STDOUT, cwd=job_dir)
        signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
        threading.Thread(target=_stop_on_request, args=(job_dir / "cancel", child), daemon=True).start()
        code = child.wait()
    done = job_dir / f"attempt-{number}.exit"
    temporary = done.with_suffix(".tmp")
    temporary.write_text(str(code))
    os.replace(temporary, done)
    return code


def tlscale_command(job_dir: Path, resume: bool) -> list[str]:
    """A training attempt resumes from its checkpoints; a few-shot one (minutes at most) starts over."""
    spec = str(job_dir / "spec.yaml")
    kind = (job_dir / "command").read_text().strip() if (job_dir / "command").is_file() else "train"
    if kind == "fewshot":
        return [sys.executable, "-m", "tlscale", "fewshot", spec, "--overwrite"]
    return [sys.executable, "-m", "tlscale", "train", spec, "--no-progress"] + (["--resume"] if resume else [])


def _stop_on_request(request: Path, child: subprocess.Popen) -> None:
    while child.poll() is None:
        if request.is_file():
            child.send_signal(signal.SIGTERM)
            return
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
