"""tlscale's messages go through logging.getLogger("tlscale"). Library code only logs; an entry point
(the CLI, a launched worker, a Ray job) decides where the records go: the console, and the run
folder's train.log. Only rank 0 of a multi-process run speaks, so N workers print one line."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("tlscale")
RUN_LOG = "train.log"


class RankZeroFilter(logging.Filter):
    """Warnings pass from every rank (they may say which rank failed); notes only from rank 0."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or os.environ.get("RANK", "0") == "0"


class RunLogFile(logging.FileHandler):
    """What the console showed, kept in the run folder (appended: a resumed run adds to it)."""

    def __init__(self, path: Path):
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        self.addFilter(RankZeroFilter())


@contextmanager
def run_log(run_path: Path):
    """Append this process's tlscale records to RUN/train.log while the block runs (once per run folder)."""
    path = Path(run_path) / RUN_LOG
    if any(isinstance(h, RunLogFile) and Path(h.baseFilename) == path.resolve() for h in log.handlers):
        yield
        return
    handler = RunLogFile(path)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


class ConsoleHandler(logging.StreamHandler):
    """Notes as plain lines, warnings as 'warning: ...', on stderr (stdout stays for results); a progress bar
    on the same stream steps aside for them."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"warning: {text}" if record.levelno >= logging.WARNING else text

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


class _DropKnownNoise(logging.Filter):
    """Third-party lines a user cannot act on (e.g. DeepSpeed finding the CPU it was meant to use)."""

    NOISE = ("Setting accelerator to CPU", "Failed to load CPU gemm_4bit_forward")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(noise in record.getMessage() for noise in self.NOISE)


def setup_entry_point(verbosity: int = 0, handler: logging.Handler | None = None) -> None:
    """Process-wide logging and progress settings; only entry points (CLI, worker, Ray job) call this.
    verbosity: -1 quiet (warnings only), 0 normal, 1 verbose (third-party notes and bars too)."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    log.setLevel(level)
    log.propagate = False
    if not any(isinstance(h, ConsoleHandler) or getattr(h, "tlscale_console", False) for h in log.handlers):
        handler = handler or ConsoleHandler()
        handler.tlscale_console = True
        handler.addFilter(RankZeroFilter())
        log.addHandler(handler)
    if verbosity <= 0:
        # read by transformers and huggingface_hub when they load (workers inherit them)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # not its database-setup notes on every run
        import warnings

        # deprecations inside the libraries we call (peft calling transformers' renamed methods, ...)
        warnings.filterwarnings("ignore", category=FutureWarning,
                                module=r"(torch|transformers|peft|accelerate|deepspeed)")
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")  # GPT-2's Conv1D: peft fixes it
        for name in ("DeepSpeed", "bitsandbytes.backends.cpu.ops"):
            if not any(isinstance(f, _DropKnownNoise) for f in logging.getLogger(name).filters):
                logging.getLogger(name).addFilter(_DropKnownNoise())


class QuietStream:
    """A worker's stdout without the lines third-party code prints bare (DeepSpeed announces every op it
    loads); everything else passes through unchanged."""

    NOISE = ("DeepSpeed deepspeed.ops.",)

    def __init__(self, stream):
        self.stream, self.dropping = stream, False

    def write(self, text: str) -> int:
        if text.startswith(self.NOISE) or (self.dropping and text == "\n"):
            self.dropping = not text.endswith("\n")  # print() writes the newline separately
            return len(text)
        self.dropping = False
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)
