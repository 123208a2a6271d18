"""`tlscale submit` and `tlscale jobs`: a spec as a Ray job on a shared cluster (Ray Jobs API).

The job's entrypoint runs the spec with the Ray runner on the cluster; the resolved spec travels in the
job's runtime environment (an environment variable), the working directory only when asked for.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from tlscale.errors import ConfigError, require
from tlscale.spec import JobSpec, dump_spec

SPEC_VARIABLE = "TLSCALE_JOB_SPEC"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def default_address() -> str:
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def job_client(address: str | None):
    require("ray", "ray")
    from ray.job_submission import JobSubmissionClient

    address = address or default_address()
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001  (connection refused, wrong scheme, auth: all mean "cannot use it")
        raise ConfigError(f"--address: cannot reach a Ray job server at '{address}': "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def as_ray_job(spec: JobSpec) -> JobSpec:
    """The spec with runner: ray, validated again (resources and world size must fit)."""
    from tlscale.spec import spec_from_dict

    return spec_from_dict({**spec.model_dump(mode="json"), "runner": "ray"})


def submit(spec: JobSpec, address: str | None, working_dir: Path | None = None, name: str | None = None) -> str:
    client = job_client(address)
    job = as_ray_job(spec)
    runtime_env: dict = {"env_vars": {SPEC_VARIABLE: dump_spec(job)}}
    if working_dir is not None:
        if not Path(working_dir).is_dir():
            raise ConfigError(f"--working-dir: '{working_dir}' is not a directory")
        runtime_env["working_dir"] = str(working_dir)
    submission_id = f"tlscale-{name or Path(job.output_dir).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return client.submit_job(entrypoint="python -m tlscale.runners.ray_job", runtime_env=runtime_env,
                             submission_id=submission_id,
                             metadata={"tlscale_output_dir": str(job.output_dir), "tlscale_task": job.task})


def wait(client, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    start = time.monotonic()
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL or (timeout_s is not None and time.monotonic() - start > timeout_s):
            return status
        time.sleep(poll_s)


def job_info(client, job_id: str):
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        if "does not exist" in str(exc) or "404" in str(exc):
            raise ConfigError(f"JOB: no job '{job_id}' on this cluster; `tlscale jobs list` shows them") from None
        raise


def failure_excerpt(logs: str, lines: int = 25) -> str:
    """The end of a failed job's log, starting at its last traceback or error line if there is one."""
    rows = logs.rstrip().splitlines()
    marks = [i for i, row in enumerate(rows) if row.startswith("Traceback") or row.startswith("error:")
             or "Error" in row.split(":")[0]]
    start = max(marks[-1] if marks else 0, len(rows) - lines)
    return "\n".join(rows[start:])


def follow_logs(client, job_id: str, write) -> None:
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())
