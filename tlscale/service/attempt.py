"""One attempt of a service job: `python -m tlscale.service.attempt JOB_DIR N [--resume]`.

Runs `tlscale train` on the job's spec and writes its exit code to JOB_DIR/attempt-N.exit when it ends, so
a dispatcher that was restarted in between (even after a SIGKILL) still learns how the attempt ended. It
runs in its own session, outliving the server; SIGTERM is passed on (tlscale checkpoints and exits 0).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    job_dir, number, resume = Path(argv[0]), int(argv[1]), "--resume" in argv[2:]
    command = [sys.executable, "-m", "tlscale", "train", str(job_dir / "spec.yaml"), "--no-progress"]
    with open(job_dir / f"attempt-{number}.log", "ab") as log:
        child = subprocess.Popen(command + (["--resume"] if resume else []), stdout=log, stderr=subprocess.STDOUT,
                                 cwd=job_dir)
        signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
        code = child.wait()
    done = job_dir / f"attempt-{number}.exit"
    temporary = done.with_suffix(".tmp")
    temporary.write_text(str(code))
    os.replace(temporary, done)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
