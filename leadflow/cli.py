"""The `leadflow` command: run the stack, run one service, manage API keys."""

from __future__ import annotations

import asyncio
import json
import time
from enum import StrEnum
from importlib import import_module
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from leadflow.chassis.auth import Role
from leadflow.config import SERVICES, StackSettings
from leadflow.keys import create_key, list_keys, revoke_key
from shared.logging import configure_logging

app = typer.Typer(
    help="leadflow: lead intake, assignment, nurture and analytics.", no_args_is_help=True
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()

ServiceName = StrEnum("ServiceName", {name: name for name in SERVICES})  # type: ignore[misc]


@app.command()
def up(
    data_dir: Annotated[
        Path | None, typer.Option(help="Where Kafka and MongoDB keep their data.")
    ] = None,
    persistent: Annotated[
        bool, typer.Option(help="Keep data across restarts (off: memory only).")
    ] = True,
) -> None:
    """Start Kafka, MongoDB and the four services; Ctrl-C stops everything."""
    from leadflow.supervisor import Stack, StopRequested, exclusive, stop_on_signals  # noqa: PLC0415

    overrides: dict[str, Any] = {"persistent": persistent}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    settings = StackSettings(**overrides)
    configure_logging("leadflow-up", json=False)
    stack = Stack(settings)
    code = 0
    with exclusive(stack.data_dir), stop_on_signals():
        try:
            console.print(f"[bold]starting leadflow[/] (data in {stack.data_dir})")
            ready = stack.start()
            _print_ready(ready, stack.data_dir)
            while True:
                stack.supervise_once(time.monotonic())
                time.sleep(0.5)
        except StopRequested as signal_name:
            console.print(f"[bold]{signal_name}: stopping leadflow[/]")
        except (RuntimeError, TimeoutError) as error:
            console.print(f"[bold red]leadflow stopped: {error}[/]")
            code = 1
        finally:
            stack.stop()
            console.print("[bold]stopped[/]: no leadflow process is left running")
    raise typer.Exit(code)


def _print_ready(ready: Any, data_dir: Path) -> None:
    table = Table(title=f"leadflow is up in {ready.started_in_s:.1f}s")
    table.add_column("service")
    table.add_column("URL")
    table.add_column("API docs")
    for name, url in ready.services.items():
        table.add_row(name, url, f"{url}/docs")
    console.print(table)
    console.print(f"Kafka   {ready.kafka_bootstrap}  (log storage: {ready.kafka_storage})")
    console.print(f"MongoDB {ready.mongo_url}")
    console.print(f"admin API key: [bold]{ready.admin_key}[/]  (send as X-API-Key)")
    console.print(f"logs in {data_dir / 'logs'}; press Ctrl-C to stop")


@app.command()
def service(name: Annotated[ServiceName, typer.Argument(help="Which service to run.")]) -> None:
    """Run one service in the foreground (what a container runs)."""
    module = import_module(f"services.{name.value}.app")
    settings_module = import_module(f"services.{name.value}.settings")
    settings = settings_module.Settings()
    uvicorn.run(
        module.create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=15,
    )


@app.command()
def asyncapi(
    name: Annotated[ServiceName, typer.Argument(help="Which service.")],
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Print a service's AsyncAPI document (the events it consumes and publishes)."""
    module = import_module(f"services.{name.value}.app")
    fastapi_app = module.create_app()
    document = fastapi_app.state.chassis.asyncapi(fastapi_app.version).to_specification()
    text = json.dumps(document.to_jsonable(), indent=2)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n")


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option(help="What the key may do.")],
    name: Annotated[str, typer.Option(help="Who or what uses the key.")] = "",
    rep_id: Annotated[str | None, typer.Option(help="The rep a rep key acts as.")] = None,
) -> None:
    """Create an API key; it is shown once and stored only as a hash."""
    settings = StackSettings()
    try:
        issued = asyncio.run(
            create_key(
                settings.effective_mongo_url(),
                settings.identity_database,
                role,
                name or f"{role} key",
                rep_id,
            )
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    typer.echo(issued.key)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (never the keys themselves)."""
    settings = StackSettings()
    documents = asyncio.run(list_keys(settings.effective_mongo_url(), settings.identity_database))
    table = Table()
    for column in ("key_id", "role", "name", "rep_id", "created_at", "revoked_at"):
        table.add_column(column)
    for doc in documents:
        table.add_row(
            *(
                str(doc.get(c) or "")
                for c in ("key_id", "role", "name", "rep_id", "created_at", "revoked_at")
            )
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key_id shown by `keys list`.")],
) -> None:
    """Revoke a key; services stop accepting it within their cache time (30 s)."""
    settings = StackSettings()
    if not asyncio.run(
        revoke_key(settings.effective_mongo_url(), settings.identity_database, key_id)
    ):
        raise typer.BadParameter(f"no active key with id {key_id}")
    typer.echo(f"revoked {key_id}")
