"""The `leadflow` command: run the stack, run one service, manage API keys."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
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
        bool | None,
        typer.Option(
            "--persistent/--no-persistent",
            help="Keep data across restarts (off: memory only). Default: LEADFLOW_PERSISTENT, "
            "else on.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start Kafka, MongoDB and the four services; Ctrl-C stops everything."""
    from leadflow.supervisor import Stack, StopRequested, exclusive, stop_on_signals  # noqa: PLC0415

    settings = stack_settings(data_dir=data_dir, persistent=persistent)
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


def stack_settings(*, data_dir: Path | None, persistent: bool | None) -> StackSettings:
    """The environment's `LEADFLOW_*` settings, overridden only by options given explicitly."""
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if persistent is not None:
        overrides["persistent"] = persistent
    return StackSettings(**overrides)


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
    if ready.sinks_page:
        console.print(f'emails and texts nurture "sent": [bold]{ready.sinks_page}[/]')
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
    text = json.dumps(document.to_jsonable(), indent=2, sort_keys=True)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n")


@app.command("api-reference")
def api_reference() -> None:
    """Print the HTTP endpoints of every service, with the roles each one admits (Markdown)."""
    lines = [
        "# HTTP API",
        "",
        "Generated by `./dev api-reference > docs/API.md`; the full schemas are in each",
        "service's OpenAPI document at `/docs` and `/openapi.json`. Roles: `admin` may call",
        "everything; a `rep` key acts only on that rep's own leads.",
        "",
    ]
    for name in SERVICES:
        fastapi_app = import_module(f"services.{name}.app").create_app()
        lines += [f"## {name}", "", "| method | path | roles | what it does |", "|---|---|---|---|"]
        for route in _api_routes(fastapi_app.routes):
            if not route.include_in_schema:
                continue
            roles = sorted(
                role.value
                for dependency in route.dependant.dependencies
                for role in getattr(dependency.call, "roles", ())
                if role is not Role.ADMIN
            )
            summary = (route.summary or route.name).replace("|", "/")
            for method in sorted(route.methods):
                lines.append(
                    f"| {method} | `{route.path}` | {', '.join(roles) or 'public'} | {summary} |"
                )
        lines.append("")
    typer.echo("\n".join(lines))


def _api_routes(routes: Sequence[Any]) -> Iterator[Any]:
    """Every APIRoute, looking inside included routers."""
    from fastapi.routing import APIRoute  # noqa: PLC0415

    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(included.routes)


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


# --- analytics and the demo -----------------------------------------------------------------

analytics_app = typer.Typer(help="Analytics maintenance.", no_args_is_help=True)
app.add_typer(analytics_app, name="analytics")


@analytics_app.command("rebuild")
def analytics_rebuild(
    chunk: Annotated[int, typer.Option(min=1, help="Events tallied per transaction.")] = 1000,
) -> None:
    """Rebuild every analytics roll-up from its event store (stop analytics first)."""
    from rich.progress import Progress  # noqa: PLC0415

    from services.analytics.rebuild import rebuild_rollups  # noqa: PLC0415
    from services.analytics.settings import Settings as AnalyticsSettings  # noqa: PLC0415

    settings = AnalyticsSettings()
    with Progress(console=console) as progress:
        task = progress.add_task("rebuilding roll-ups", total=None)
        done = asyncio.run(
            rebuild_rollups(
                settings,
                chunk=chunk,
                on_total=lambda total: progress.update(task, total=total),
                on_progress=lambda n: progress.advance(task, n),
            )
        )
    console.print(f"rebuilt analytics roll-ups from {done} stored events in {settings.database}")


@app.command()
def demo(
    leads: Annotated[int, typer.Option(min=1, max=5000, help="How many leads arrive.")] = 120,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="LEADFLOW_API_KEY", help="An admin key (default: the one `up` made)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Where the services listen.")] = "127.0.0.1",
    seed: Annotated[int, typer.Option(help="Same seed, same month.")] = 2026,
) -> None:
    """Drive a month of leads, calls, visits, sales and losses through the running stack
    (`leadflow up` in another terminal), then open the dashboard."""
    from leadflow.demo import DemoConfig, demo_progress, run_demo, wait_for_reports  # noqa: PLC0415

    settings = StackSettings()
    key = api_key or _stored_admin_key(settings.data_dir)
    # Each service's port as `up` gives it (LEADFLOW_<SERVICE>_PORT, else its default).
    ports = {name: import_module(f"services.{name}.settings").Settings().port for name in SERVICES}
    url = {name: f"http://{host}:{port}" for name, port in ports.items()}
    config = DemoConfig(
        intake_url=url["intake"],
        assignment_url=url["assignment"],
        analytics_url=url["analytics"],
        nurture_url=url["nurture"],
        api_key=key,
        leads=leads,
        seed=seed,
    )
    with demo_progress() as progress:
        try:
            result = asyncio.run(run_demo(config, progress))
        except RuntimeError as error:
            raise typer.BadParameter(str(error)) from error
    summary = asyncio.run(wait_for_reports(url["analytics"], key, result.leads_posted))
    table = Table(title="demo")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("leads posted", str(result.leads_posted))
    table.add_row("leads routed to a rep", str(result.leads_assigned))
    for action, count in sorted(result.actions.items()):
        table.add_row(action, str(count))
    console.print(table)
    for refused, count in sorted(result.refused.items()):
        console.print(f"[yellow]refused[/] {refused} x{count}")
    for note in result.skipped:
        console.print(f"[yellow]skipped[/] {note}")
    figures = summary.get("figures", {})
    console.print(
        f"analytics counted {figures.get('leads_received', 0)} new leads this month; "
        f"dashboard: [bold]{url['analytics']}/dashboard#key={key}[/]"
    )
    if result.leads_posted == 0:
        raise typer.Exit(1)


def _stored_admin_key(data_dir: Path) -> str:
    key_file = data_dir / "admin.key"
    if not key_file.exists():
        raise typer.BadParameter(
            f"no {key_file}: start the stack with `leadflow up`, or pass --api-key"
        )
    return key_file.read_text().strip()


@app.command("import")
def import_csv(  # noqa: PLR0917 - typer passes every option by name
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The CSV file.")
    ],
    encoding: Annotated[
        str, typer.Option(help="auto, utf-8, utf-8-bom, cp949 (euc-kr) or gb18030 (gbk).")
    ] = "auto",
    mapping: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help='A JSON file of header -> field ("phone", "custom:<label>", "ignore").',
        ),
    ] = None,
    source: Annotated[str, typer.Option(help="The source the leads are counted under.")] = (
        "import"
    ),
    campaign: Annotated[str | None, typer.Option(help="The campaign of every row.")] = None,
    region: Annotated[
        str | None, typer.Option(help="Region for phones without +<code> (KR, CN, US...).")
    ] = None,
    import_id: Annotated[
        str | None, typer.Option(help="Default: derived from the file, so a rerun resumes.")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="intake's URL (default: where `up` runs it).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="LEADFLOW_API_KEY", help="An API key (default: the one `up` made)."),
    ] = None,
) -> None:
    """Import leads from a CSV file into the running intake, with a progress bar. Run it
    again after an interruption: rows already imported are skipped."""
    import dataclasses  # noqa: PLC0415

    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from services.intake.imports.upload import (  # noqa: PLC0415
        UploadFailedError,
        UploadOptions,
        download_errors,
        file_import_id,
        upload_file,
    )
    from services.intake.settings import Settings as IntakeSettings  # noqa: PLC0415

    intake = IntakeSettings()
    try:
        columns = json.loads(mapping.read_text(encoding="utf-8")) if mapping else None
    except ValueError as error:
        raise typer.BadParameter(f"{mapping} is not JSON: {error}") from error
    options = UploadOptions(
        url=url or f"http://{intake.host}:{intake.port}",
        api_key=api_key or _stored_admin_key(StackSettings().data_dir),
        encoding=encoding,
        mapping=columns,
        source=source,
        campaign=campaign,
        default_region=region,
    )
    chosen_id = import_id or file_import_id(file, options)
    options = dataclasses.replace(options, import_id=chosen_id)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"importing {file.name}", total=file.stat().st_size)
        try:
            summary = upload_file(file, options, on_bytes=lambda n: progress.advance(task, n))
        except UploadFailedError as error:
            progress.stop()
            hint = " Run the same command again to resume." if error.resumable else ""
            console.print(f"[bold red]import {chosen_id} not finished[/]: {error}{hint}")
            raise typer.Exit(1) from error
    table = Table(title=f"import {chosen_id}")
    table.add_column("rows")
    table.add_column("count", justify="right")
    for label in ("created", "merged", "rejected", "rows_skipped"):
        table.add_row(label.replace("_", " "), str(summary.get(label, 0)))
    console.print(table)
    if summary.get("rejected"):
        report = file.with_name(f"{file.stem}.errors.csv")
        listed = download_errors(options, chosen_id, report)
        console.print(f"[yellow]{listed} problems[/] (line, field, reason) written to {report}")
