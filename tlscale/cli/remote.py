"""`tlscale submit --server` and `tlscale jobs ... --server`: the same commands, against the job API."""
from __future__ import annotations

import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _client(server: str | None):
    from tlscale.service.client import Client

    return Client(server)


def _show_event(event: dict) -> None:
    when = datetime.datetime.fromtimestamp(event["created_at"]).strftime("%H:%M:%S")
    out.print(f"{when} {event['type']:<10} {escape(event['message'])}")


def _end(job: dict) -> None:
    out.print(f"{job['id']}: {job['status']}")
    if job["status"] == "failed":
        err.print(f"[bold red]{job['error']['kind']}:[/] {escape(job['error']['message'])}", markup=True)
        raise typer.Exit(1)
    if job["status"] == "cancelled":
        raise typer.Exit(1)


def submit(spec: Path, overrides: list[str] | None, server: str | None, wait: bool, command: str = "train") -> None:
    client = _client(server)
    job = client.submit(spec, overrides, command=command)
    out.print(f"submitted {job['id']} ({job['status']})\n  tlscale jobs status {job['id']} --server ...\n"
              f"  tlscale jobs logs {job['id']} --follow --server ...")
    if wait:
        _end(client.wait(job["id"], on_event=_show_event))


def jobs_list(server: str | None) -> None:
    from rich.table import Table

    table = Table("status", "queue", "created", "model", "strategy", title_justify="left")
    table.add_column("job", no_wrap=True)  # whole: it is what the other commands take
    for job in _client(server).jobs(limit=100)["data"]:
        created = datetime.datetime.fromtimestamp(job["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
        queue = f"{job['queue_position']} of {job['queue_depth']}" if job["queue_position"] else ""
        table.add_row(job["status"], queue, created, job["model"] or "", job["strategy"] or "", job["id"])
    Console(width=max(out.width, 140), highlight=False).print(table)


def jobs_status(job_id: str, server: str | None) -> None:
    job = _client(server).job(job_id)
    extra = f" ({job['queue_position']} in the team's queue, {job['queue_depth']} waiting in all)" \
        if job["queue_position"] else ""
    out.print(f"{job_id}: {job['status']}{extra}, attempt {job['attempt']}")
    if job["status"] == "failed":
        _end(job)


def jobs_logs(job_id: str, server: str | None, follow: bool) -> None:
    client = _client(server)
    if follow:
        client.wait(job_id, on_event=_show_event)
    else:
        for event in client.events(job_id)["data"]:
            _show_event(event)


def jobs_cancel(job_id: str, server: str | None) -> None:
    job = _client(server).cancel(job_id)
    out.print(f"{job_id}: " + ("cancellation requested" if job["cancel_requested"] and job["status"] == "running"
                               else job["status"]))
