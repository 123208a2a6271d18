"""Shared fixtures: real data from ../shared/data, tiny models, spec writing, CLI running."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TLSCALE_DATA", ROOT.parent / "shared" / "data")).resolve()
os.environ["TLSCALE_DATA"] = str(DATA)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on this 2-core machine kind: one thread each (and each launched rank
    # one), set before torch loads. Two processes each spinning two OpenMP threads on two cores run many times
    # slower than one thread each (PLATFORM-NOTES).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


# `make test` hands whole files to two workers (`--dist loadfile --no-loadscope-reorder`) in collection order, so
# the longest files go first and the many short ones fill in behind them (longest-processing-time-first). xdist's
# default order, the files with the most tests first, started the 11-minute SST-2 file and the 6-minute XQuAD
# file last, leaving one worker idle for minutes at the end. Durations: `--durations=0` on this machine kind.
LONGEST_FIRST = (
    "tests/integration/test_minilm_sst2.py",     # ~660 s on one worker
    "tests/integration/test_qa_runs.py",         # ~410 s (the XQuAD floor)
    "tests/integration/test_tiny_runs.py",       # ~190 s
    "tests/integration/test_fewshot_minilm.py",  # ~150 s
    "tests/integration/test_ladder.py",          # ~90 s
    "tests/integration/test_multi_task.py",      # ~80 s
    "tests/service/test_api.py",                 # ~75 s
    "tests/integration/test_causal_lm_runs.py",  # ~70 s
    "tests/integration/test_distillation.py",    # ~60 s
)


def pytest_collection_modifyitems(config, items):
    order = {path: rank for rank, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.nodeid.split("::", 1)[0], len(order)))  # stable: the rest keep theirs


@pytest.fixture(scope="session", autouse=True)
def _runs_dir(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    os.environ["TLSCALE_RUNS"] = str(runs)
    os.environ.setdefault("TLSCALE_CACHE", str(tmp_path_factory.mktemp("cache")))
    return runs


@pytest.fixture
def sst2_rows():
    """The first lines of the real SST-2 training file, as (sentence, label) pairs."""
    lines = (DATA / "sst2" / "train.tsv").read_text().splitlines()[1:]
    return [tuple(line.rsplit("\t", 1)) for line in lines]


def tiny_spec(output_dir: Path, train_file: Path, eval_file: Path | None = None, **sections) -> dict:
    """A small classification spec on the tiny random BERT; sections override defaults."""
    spec = {
        "task": "text_classification",
        "seed": 7,
        "output_dir": str(output_dir),
        "model": {"name_or_path": "tiny:bert", "max_length": 48},
        "data": {"train_file": str(train_file), "text_column": "sentence", "label_column": "label",
                 "labels": ["negative", "positive"]},
        "strategy": {"name": "full"},
        "training": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "log_every_steps": 2, "report_to": []},
        "eval": {"batch_size": 32},
    }
    if eval_file is not None:
        spec["data"]["eval_file"] = str(eval_file)
    for name, values in sections.items():
        spec.setdefault(name, {})
        spec[name] = {**spec[name], **values} if isinstance(values, dict) else values
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def sst2_files(tmp_path_factory) -> tuple[Path, Path]:
    """The same 160 training and 64 eval rows of real SST-2 as small_sst2, written once per session."""
    tmp = tmp_path_factory.mktemp("sst2-files")
    lines = (DATA / "sst2" / "train.tsv").read_text().splitlines()
    (tmp / "train.tsv").write_text("\n".join(lines[:161]) + "\n")
    (tmp / "dev.tsv").write_text("\n".join(lines[:1] + lines[1001:1065]) + "\n")
    return tmp / "train.tsv", tmp / "dev.tsv"


@pytest.fixture
def small_sst2(tmp_path, sst2_rows) -> tuple[Path, Path]:
    """160 training and 64 eval rows of real SST-2 as TSV files."""
    def write(name, rows):
        path = tmp_path / name
        path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in rows))
        return path

    return write("train.tsv", sst2_rows[:160]), write("dev.tsv", sst2_rows[1000:1064])


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 900, fresh: bool = False) -> subprocess.CompletedProcess:
    """The real `tlscale` command in a process of its own: forked from this worker's pre-imported zygote
    (tests/cli_zygote.py: ~8 s of imports saved per command), or with fresh=True (or TLSCALE_TEST_FRESH=1) a new
    interpreter, for tests of what a first run's console shows."""
    command = [sys.executable, "-m", "tlscale", *map(str, args)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    zygote = None if fresh or os.environ.get("TLSCALE_TEST_FRESH") == "1" else _zygote()
    if zygote is None:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    return zygote.run(command, cwd, env, timeout)


class _Zygote:
    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-m", "tests.cli_zygote"], cwd=ROOT, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                                             "MKL_NUM_THREADS": "1"})  # no OpenMP pool before the forks
        ready = self.process.stdout.readline()
        assert ready.startswith('{"ready"'), f"the CLI zygote did not start: {ready!r}"
        self.usable = json.loads(ready)["ready"]  # false: an import started threads, so no forking

    def run(self, command, cwd, env, timeout) -> subprocess.CompletedProcess:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            request = {"args": command[3:], "cwd": str(cwd), "env": env, "stdout": out, "stderr": err,
                       "timeout": timeout}
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            reply = json.loads(self.process.stdout.readline())
            stdout, stderr = (Path(out).read_text(errors="replace"), Path(err).read_text(errors="replace"))
        if reply.get("timeout"):
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
        return subprocess.CompletedProcess(command, reply["returncode"], stdout, stderr)


_ZYGOTE: list[_Zygote] = []


def _zygote() -> _Zygote | None:
    if not _ZYGOTE or (_ZYGOTE[0].usable and _ZYGOTE[0].process.poll() is not None):
        _ZYGOTE[:] = [_Zygote()]
    return _ZYGOTE[0] if _ZYGOTE[0].usable else None


def wait_for(predicate, timeout: float = 180.0) -> bool:
    """Poll until predicate() holds (True) or the timeout passes (False)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
