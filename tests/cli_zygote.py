"""A pre-imported Python that forks one child per `tlscale` command the tests run.

A tiny training run takes ~10 s here, of which ~8 s is importing torch, transformers, peft and DeepSpeed and
0.3 s is training. The suite runs the CLI a few hundred times, so each pytest worker keeps one of these: it
imports the heavy libraries once, then, for each request, forks a child that sets the request's argv, working
directory, environment, thread count and output files and runs `python -m tlscale` as a fresh process would. The
child is a real process of its own (its exit code, signals, os._exit and side effects stay its own); only the
imports are shared. Tests that start the CLI with Popen (to signal it) or check a first run's console use a fresh process.

Protocol, one JSON line each way on stdin/stdout: {"args", "cwd", "env", "stdout", "stderr", "timeout"} ->
{"returncode"} or {"timeout": true}.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time


def preload() -> None:
    """What every `tlscale` run imports; environment set first as the CLI's entry point would set it."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import modeling_utils  # noqa: F401

    import tlscale.cli.app  # noqa: F401
    import tlscale.models.pooled_classifier  # noqa: F401
    import tlscale.training.loop  # noqa: F401
    for optional in ("peft", "accelerate", "deepspeed"):
        try:
            __import__(optional)
        except ImportError:
            pass


def single_threaded() -> bool:
    """Forking is safe only while no other thread holds a lock (an OpenMP pool started by an import, say);
    jemalloc's background thread (one library links it) is fork-safe by design."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return False
    names = [open(f"/proc/self/task/{task}/comm").read().strip() for task in tasks if int(task) != os.getpid()]
    return all(name.startswith("jemalloc") for name in names)


def wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"returncode": os.waitstatus_to_exitcode(status)}
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"timeout": True}
        time.sleep(0.02)


def serve(replies_fd: int) -> dict:
    """Answer requests until stdin closes; returns (in the forked child only) the request to run."""
    requests, replies = os.fdopen(0, "r", closefd=False), os.fdopen(replies_fd, "w")
    replies.write(json.dumps({"ready": single_threaded()}) + "\n")
    replies.flush()
    if not single_threaded():
        os._exit(0)
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            replies.close()
            return request
        replies.write(json.dumps(wait(pid, request["timeout"])) + "\n")
        replies.flush()
    os._exit(0)


def become(request: dict) -> None:
    """Turn this forked child into `python -m tlscale ARGS` with the request's files and environment."""
    import runpy

    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for source, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(source, target)
        os.close(source)
    sys.stdin = open(0, closefd=False)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    import torch

    # the zygote imported torch with one OpenMP thread (no pool started: safe to fork); the child takes the
    # thread count a fresh process would have had with the request's environment
    threads = request["env"].get("OMP_NUM_THREADS")
    torch.set_num_threads(int(threads) if threads else len(os.sched_getaffinity(0)))
    sys.path[0] = os.getcwd()  # as `python -m` puts it
    sys.argv = ["tlscale", *request["args"]]
    runpy.run_module("tlscale", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    replies = os.dup(1)
    os.dup2(2, 1)  # what the imports print (DeepSpeed announces the accelerator on stdout) is not a reply
    preload()
    import gc

    gc.freeze()  # the imported objects are never collected: each child's exit takes 0.5 s instead of 2.2 s
    become(serve(replies))
