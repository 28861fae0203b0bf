"""``marketprism api`` (serve), ``marketprism api token`` (issue a JWT), ``marketprism api key`` (make an API key
and its digest for the settings) and ``marketprism bench api``. Only wiring."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from pipeline.settings import Settings

log = logging.getLogger(__name__)

api_app = typer.Typer(help="The operations API (HTTP: /api/v1, /api/v2 Alertmanager, /docs)")


@api_app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="listen address (default: api.host)")] = None,
    port: Annotated[int | None, typer.Option(help="listen port (default: api.port)")] = None,
) -> None:
    """Serve the API until SIGINT/SIGTERM (uvicorn, one process; run more replicas for more)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from pipeline.api.app import create_app
    from pipeline.observability.metrics import serve_metrics

    settings: Settings = ctx.obj
    app = create_app(settings)
    # the process-level /metrics port every component has (Prometheus and the image's health check, inside the
    # deployment network); the API's own /metrics route needs a token like every route but health
    serve_metrics(settings.metrics_port, addr=getattr(settings, "metrics_host", "127.0.0.1"))
    bind_host, bind_port = host or settings.api.host, port or settings.api.port
    typer.echo(f"marketprism api on http://{bind_host}:{bind_port} (docs at /docs)")
    # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal to the handlers it found: these end
    # the process with status 0 (a stop we asked for is not a failure)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped)
    uvicorn.run(
        app,
        host=bind_host,
        port=bind_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # the root logger configured by the entry point
        limit_concurrency=10_000,
        timeout_graceful_shutdown=5,
    )


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


@api_app.command("token")
def token(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="who the token is for (the actor of its writes)")],
    role: Annotated[str, typer.Option("--role", "-r", help="viewer, operator or admin")] = "viewer",
    ttl: Annotated[int | None, typer.Option(help="seconds it stays valid (default: api.token_ttl_s)")] = None,
) -> None:
    """Print an HS256 token signed with api.jwt_secret."""
    from pipeline.api.auth import ROLES, mint

    settings: Settings = ctx.obj
    if role not in ROLES:
        raise typer.BadParameter(f"--role must be one of {list(ROLES)}")
    try:
        typer.echo(mint(settings.api, name, role, ttl))  # type: ignore[arg-type]
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc


@api_app.command("key")
def key(
    name: Annotated[str, typer.Option("--name", "-n")],
    role: Annotated[str, typer.Option("--role", "-r")] = "viewer",
) -> None:
    """Make a random API key: prints the key once (give it to the client) and the settings entry (its digest)."""
    from pipeline.api.auth import ROLES, key_digest, new_api_key

    if role not in ROLES:
        raise typer.BadParameter(f"--role must be one of {list(ROLES)}")
    secret = new_api_key()
    typer.echo(f"key: {secret}")
    typer.echo(f"settings: api.api_keys.{name} = {{sha256: {key_digest(secret)}, role: {role}}}")
    typer.echo(
        f'env: MARKETPRISM_API__API_KEYS=\'{{"{name}": {{"sha256": "{key_digest(secret)}", "role": "{role}"}}}}\''
    )


OPENAPI_PATH = Path(__file__).with_name("openapi.json")


@api_app.command("openapi")
def openapi(
    ctx: typer.Context, write: Annotated[bool, typer.Option(help="rewrite pipeline/api/openapi.json")] = False
) -> None:
    """Check (or --write) that the checked-in OpenAPI document is the one the API serves."""
    import json

    from pipeline.api.app import create_app

    text = json.dumps(create_app(ctx.obj, read_topics=False).openapi(), indent=2, sort_keys=True) + "\n"
    if write:
        OPENAPI_PATH.write_text(text)
        typer.echo(f"wrote {OPENAPI_PATH}")
    elif not OPENAPI_PATH.exists() or OPENAPI_PATH.read_text() != text:
        typer.echo(f"{OPENAPI_PATH} is stale: run marketprism api openapi --write", err=True)
        raise typer.Exit(1)
