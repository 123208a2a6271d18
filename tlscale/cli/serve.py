"""`tlscale serve` (the job API) and `tlscale serve admin ...` (teams, tokens, quotas)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tlscale.cli.app import app, out, user_errors

DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Uploads, runs and (without --database-url) "
                                                 "the SQLite database.")]
DatabaseUrl = Annotated[Optional[str], typer.Option("--database-url", envvar="TLSCALE_DATABASE_URL",
                                                    help="postgresql://... (several servers may share it).")]

serve_app = typer.Typer(help="Run tlscale as a service: a fine-tuning job API for teams.", invoke_without_command=True)
app.add_typer(serve_app, name="serve")
admin = typer.Typer(help="Teams, API tokens and quotas.", no_args_is_help=True)
serve_app.add_typer(admin, name="admin")


@serve_app.callback()
@user_errors
def serve(ctx: typer.Context, data_dir: DataDir = None, database_url: DatabaseUrl = None,
          host: Annotated[str, typer.Option(help="Interface to listen on (loopback unless told).")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port.")] = 8000,
          allow_root: Annotated[Optional[list[Path]], typer.Option(
              "--allow-root", help="A server folder specs may name paths under (shared cluster storage).")] = None,
          capacity: Annotated[int, typer.Option(min=1, help="Jobs this server runs at once (with --ray-address: "
                                                           "on the cluster, all replicas together).")] = 1,
          ray_address: Annotated[Optional[str], typer.Option(
              "--ray-address", envvar="TLSCALE_RAY_ADDRESS",
              help="A Ray cluster's job server (http://HEAD:8265): jobs run there as Ray jobs. The data dir must be "
                   "storage the cluster's nodes mount at the same path; a Ray token goes in RAY_AUTH_TOKEN.")] = None):
    """Start the API: `tlscale serve --data-dir DIR` (SQLite and the local runner; no other server needed)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"data_dir": data_dir, "database_url": database_url}
        return
    from tlscale.service.server import serve as run_server

    run_server(data_dir, database_url, host, port, allow_root or [], capacity, ray_address,
               announce=lambda: out.print(f"tlscale serve: http://{host}:{port}  (API under /v1, OpenAPI at /docs)"
                                          + (f"; jobs run on the Ray cluster at {ray_address}" if ray_address else "")))


def _store(ctx: typer.Context, data_dir: Optional[Path], database_url: Optional[str]):
    from tlscale.errors import require
    from tlscale.service.server import open_store

    require("sqlalchemy", "service")
    parent = ctx.obj or {}
    return open_store(data_dir or parent.get("data_dir"), database_url or parent.get("database_url"))


@admin.command("create-team")
@user_errors
def create_team(ctx: typer.Context, name: str, data_dir: DataDir = None, database_url: DatabaseUrl = None):
    """Create a team; its first API token is the last line printed (shown once)."""
    from tlscale.service.teams import create_team as make

    team, token = make(_store(ctx, data_dir, database_url), name)
    out.print(f"team {team.name} ({team.id}) created; its API token (shown once):")
    print(token)


@admin.command("create-token")
@user_errors
def create_token(ctx: typer.Context, team: str, data_dir: DataDir = None, database_url: DatabaseUrl = None,
                 expires_in_days: Annotated[Optional[float], typer.Option(min=0.0)] = None):
    """Another API token for TEAM (optionally expiring); printed once, on the last line."""
    from tlscale.service.teams import create_token as make

    print(make(_store(ctx, data_dir, database_url), team, expires_in_days))


@admin.command("revoke-token")
@user_errors
def revoke_token(ctx: typer.Context, token: Annotated[str, typer.Argument(help="The token, or its prefix as "
                                                                           "list-teams shows it.")],
                 data_dir: DataDir = None, database_url: DatabaseUrl = None):
    """Revoke a token at once: requests with it get 401."""
    from tlscale.service.teams import revoke_token as revoke

    out.print(f"revoked {revoke(_store(ctx, data_dir, database_url), token)} token(s)")


@admin.command("list-teams")
@user_errors
def list_teams(ctx: typer.Context, data_dir: DataDir = None, database_url: DatabaseUrl = None):
    """Teams, their quotas and their tokens (prefixes only)."""
    from tlscale.service.teams import list_teams as listed

    for team in listed(_store(ctx, data_dir, database_url)):
        tokens = ", ".join(f"{t['prefix']}…" + (" (revoked)" if t["revoked"] else "") for t in team["tokens"])
        out.print(f"{team['name']}  running<={team['max_running']} queued<={team['max_queued']} "
                  f"compute-hours/month<={team['max_compute_hours']:g}  tokens: {tokens or 'none'}")


@admin.command("set-quota")
@user_errors
def set_quota(ctx: typer.Context, team: str, data_dir: DataDir = None, database_url: DatabaseUrl = None,
              max_running: Annotated[Optional[int], typer.Option(min=0)] = None,
              max_queued: Annotated[Optional[int], typer.Option(min=0)] = None,
              max_compute_hours: Annotated[Optional[float], typer.Option(min=0.0)] = None):
    """Change a team's quotas (jobs running at once, jobs waiting, compute-hours per calendar month)."""
    from tlscale.service.teams import set_quotas

    changed = set_quotas(_store(ctx, data_dir, database_url), team, max_running=max_running, max_queued=max_queued,
                         max_compute_hours=max_compute_hours)
    out.print(f"{changed.name}: running<={changed.max_running} queued<={changed.max_queued} "
              f"compute-hours/month<={changed.max_compute_hours:g}")


@serve_app.command("openapi")
@user_errors
def openapi(output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")]
            = None):
    """Print the API's OpenAPI document (also at /openapi.json on a running server)."""
    import json

    from tlscale.service.server import openapi_document

    text = json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
    if output is None:
        print(text, end="")
    else:
        output.write_text(text)
