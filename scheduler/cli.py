"""``amc-scheduler``: the daemon and the commands that work from its config file.

A fault of the user's (a bad config, an unknown job, an unreachable database)
prints one line on stderr and exits 1; the traceback goes to the debug log
(``--debug``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from . import __version__, logs
from .config import LoadedConfig, load, next_fire_times
from .errors import ConfigError, InvalidInput, SchedulerError

log = logs.get_logger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

CONFIG_ENV = "AMC_SCHEDULER_CONFIG"


def _cause_chain(exc: BaseException) -> str:
    parts = [str(exc) or type(exc).__name__]
    seen = {id(exc)}
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = str(cause) or type(cause).__name__
        if text not in parts[-1]:
            parts.append(text)

        cause = cause.__cause__

    return ": ".join(parts)


def _fail(exc: BaseException) -> None:
    log.debug("command_failed", exc_info=exc)
    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            click.echo(problem, err=True)
    elif isinstance(exc, SchedulerError):
        click.echo(f"amc-scheduler: {logs.redactor.mask(_cause_chain(exc))}", err=True)
    else:
        click.echo(
            f"amc-scheduler: internal error: {type(exc).__name__}:"
            f" {logs.redactor.mask(str(exc))} (run with --debug for the traceback)",
            err=True,
        )

    sys.exit(1)


def handled(func: Callable[P, T]) -> Callable[P, T]:
    """Turn the scheduler's errors into one line on stderr and exit status 1."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except (SchedulerError, OSError) as exc:
            _fail(exc)
        except (click.exceptions.Exit, click.ClickException, KeyboardInterrupt):
            raise
        except Exception as exc:
            _fail(exc)

        raise AssertionError("unreachable")

    return wrapper


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _load(path: str | None) -> LoadedConfig:
    if not path:
        raise ConfigError([f"no config file: pass --config FILE or set {CONFIG_ENV}"])

    loaded = load(path)
    logs.redactor.add(loaded.settings.secrets())
    return loaded


config_option = click.option(
    "--config",
    "-c",
    "config_path",
    envvar=CONFIG_ENV,
    type=click.Path(dir_okay=False, path_type=str),
    help=f"The config file (or ${CONFIG_ENV}).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="amc-scheduler")
@click.option("--debug", is_flag=True, help="Log at debug level, with tracebacks.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Run Amazon Marketing Cloud workflow executions from a Postgres queue,
    within AMC's parallel limits."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    # Commands other than `run` keep stdout for their own output.
    logs.configure(level="debug" if debug else "warning", fmt="auto", stream=sys.stderr)


@main.command()
@config_option
@click.pass_context
@handled
def run(ctx: click.Context, config_path: str | None) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    from .service import Service

    loaded = _load(config_path)
    level = "debug" if ctx.obj["debug"] else loaded.settings.logging.level
    logs.configure(level=level, fmt=loaded.settings.logging.format)
    run_async(Service(loaded).run())


@main.command()
@config_option
@handled
def migrate(config_path: str | None) -> None:
    """Apply pending database migrations."""
    from .service import open_database
    from .store.migrate import current_revision, upgrade

    loaded = _load(config_path)

    async def go() -> tuple[list[str], str | None]:
        db = open_database(loaded.settings)
        await db.open()
        try:
            applied = await upgrade(db)
            return applied, await current_revision(db)
        finally:
            await db.close()

    applied, current = run_async(go())
    if applied:
        click.echo(f"applied {', '.join(applied)}; schema at {current}")
    else:
        click.echo(f"schema is current at {current}")


def _describe_schedule(loaded: LoadedConfig, now: datetime) -> list[str]:
    lines = []
    for job in loaded.settings.jobs:
        target = job.workflow_id if job.workflow_id else "ad hoc SQL"
        if job.schedule:
            upcoming = next_fire_times(job, now)
            when = upcoming[0].isoformat() if upcoming else "never"
            timing = f"cron {job.schedule!r} {job.time_zone}, next {when}"
        else:
            timing = "once at start-up"

        lines.append(f"  {job.name}: {job.instance}, {target}, {timing}")

    return lines


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@handled
def check_config(file: Path) -> None:
    """Validate a config file and summarise it."""
    loaded = _load(str(file))
    settings = loaded.settings
    now = datetime.now(UTC)
    click.echo(f"{file}: ok")
    click.echo(f"accounts: {len(settings.accounts)}")
    for account in settings.accounts:
        click.echo(
            f"  {account.id} ({account.marketplace_id}):"
            f" max_parallel {account.max_parallel}"
        )
        for instance in account.instances:
            click.echo(f"    {instance.id}: max_parallel {instance.max_parallel}")

    click.echo(f"jobs: {len(settings.jobs)}")
    for line in _describe_schedule(loaded, now):
        click.echo(line)


async def _serve_until_signal(coro: Coroutine[Any, Any, None]) -> None:
    """Run a server coroutine until SIGTERM or SIGINT, then let it clean up."""
    import signal

    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)

    with contextlib.suppress(asyncio.CancelledError):
        await task


@main.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8600, show_default=True, help="Port (0: any free).")
@click.option("--speed", type=float, help="Simulated seconds per real second.")
@click.option("--seed", type=int, help="Seed of every random draw.")
@click.option("--failure-rate", type=float, help="Share of executions that fail.")
@click.pass_context
@handled
def simulate(
    ctx: click.Context,
    config_path: str | None,
    host: str,
    port: int,
    speed: float | None,
    seed: int | None,
    failure_rate: float | None,
) -> None:
    """Serve the AMC simulator and its token endpoint over HTTP.

    With --config, accounts, limits and the amc.simulator section come from
    the file. Its credentials are client id sim-client-id, secret
    sim-client-secret, refresh token Atzr|sim-refresh-token.
    """
    from dataclasses import replace

    from .amc.simulator import SimulatorOptions, options_from_settings, serve

    options = SimulatorOptions()
    if config_path:
        settings = _load(config_path).settings
        options = options_from_settings(settings.amc.simulator, settings.accounts)

    if speed is not None:
        options = replace(options, speed=speed)

    if seed is not None:
        options = replace(options, seed=seed)

    if failure_rate is not None:
        options = replace(options, failure_rate=failure_rate)

    level = "debug" if ctx.obj["debug"] else "info"
    logs.configure(level=level)
    run_async(_serve_until_signal(serve(options, host, port)))


# Commands that work on the queue from the same config


def _open_and_migrate(loaded: LoadedConfig) -> Any:
    from .service import open_database
    from .store.migrate import upgrade

    async def go() -> Any:
        db = open_database(loaded.settings)
        await db.open()
        try:
            await upgrade(db)
        except BaseException:
            await db.close()
            raise

        return db

    return go()


def _with_db(loaded: LoadedConfig, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    async def go() -> T:
        db = await _open_and_migrate(loaded)
        try:
            return await work(db)
        finally:
            await db.close()

    return run_async(go())


def _parameters(values: tuple[str, ...]) -> dict[str, Any]:
    """``k=v`` pairs; each value is read as YAML (numbers, booleans, lists)."""
    import yaml

    found: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--param {item!r}: expected NAME=VALUE")

        try:
            found[key] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            found[key] = raw

    return found


def _describe_run(run: Any) -> str:
    from .operations import window_of

    window = window_of(run)
    if "start" in window:
        span = f"{window['start']} to {window['end']} {window.get('time_zone', 'UTC')}"
    else:
        span = str(window["type"])

    return f"run {run.id} ({run.job}, {span}): {run.state}"


@main.command()
@config_option
@click.argument("job")
@click.option(
    "--start", help="Window start: 2026-05-01, 2026-05-01T06:00:00 or TODAY(-7)."
)
@click.option("--end", help="Window end (exclusive), same forms as --start.")
@click.option("--time-zone", help="Zone of --start/--end (default: the job's).")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Parameter value; repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@handled
def enqueue(
    config_path: str | None,
    job: str,
    start: str | None,
    end: str | None,
    time_zone: str | None,
    params: tuple[str, ...],
    as_json: bool,
) -> None:
    """Queue a run of JOB (its own window, or --start/--end)."""
    import json

    from .operations import enqueue_job, run_json

    loaded = _load(config_path)
    if (start is None) != (end is None):
        raise InvalidInput("give both --start and --end, or neither")

    window = None
    if start is not None:
        window = {"start": start, "end": end}
        if time_zone:
            window["time_zone"] = time_zone

    parameters = _parameters(params)
    result = _with_db(
        loaded,
        lambda db: enqueue_job(
            db, loaded.settings, job, window=window, parameters=parameters, source="cli"
        ),
    )
    if as_json:
        click.echo(json.dumps({"run": run_json(result.run), "created": result.created}))
    elif result.created:
        click.echo(f"queued {_describe_run(result.run)}")
    else:
        click.echo(f"already there: {_describe_run(result.run)}")


@main.command()
@config_option
@click.argument("job")
@click.option("--from", "start", required=True, help="First window start: 2026-01-01.")
@click.option("--to", "end", required=True, help="End of the last window (exclusive).")
@click.option("--step", required=True, help="Window length: 1d, 7d, 12h.")
@click.option("--time-zone", help="Zone of the windows (default: the job's).")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Parameter value; repeatable.",
)
@handled
def backfill(
    config_path: str | None,
    job: str,
    start: str,
    end: str,
    step: str,
    time_zone: str | None,
    params: tuple[str, ...],
) -> None:
    """Queue tumbling windows of JOB from --from to --to, each deduplicated."""
    from .durations import parse_duration
    from .operations import backfill as backfill_runs
    from .operations import parse_moment
    from .windows import zone

    loaded = _load(config_path)
    try:
        length = parse_duration(step)
    except ValueError as exc:
        raise InvalidInput(f"--step: {exc}") from None

    if time_zone:
        try:
            zone(time_zone)
        except ValueError as exc:
            raise InvalidInput(f"--time-zone: {exc}") from None

    first, last = parse_moment(start, "--from"), parse_moment(end, "--to")
    parameters = _parameters(params)
    results = _with_db(
        loaded,
        lambda db: backfill_runs(
            db,
            loaded.settings,
            job,
            start=first,
            end=last,
            step=length,
            parameters=parameters,
            time_zone=time_zone,
        ),
    )
    created = sum(r.created for r in results)
    click.echo(
        f"{len(results)} windows: {created} queued,"
        f" {len(results) - created} already there"
    )
    for result in results:
        mark = "+" if result.created else "="
        click.echo(f"  {mark} {_describe_run(result.run)}")


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


@main.command()
@config_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the health document as JSON."
)
@handled
def status(config_path: str | None, as_json: bool) -> None:
    """Queue depth per state and slots in use per instance and account."""
    import json

    from .health import HealthCheck

    loaded = _load(config_path)

    async def read(db: Any) -> dict[str, Any]:
        report = await HealthCheck(db, lambda: loaded.settings, "cli").report()
        return report.document

    document = _with_db(loaded, read)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return

    queue = document["queue"]
    click.echo(
        f"status {document['status']}, database {document['database']['status']}"
    )
    click.echo(
        "queue: " + ", ".join(f"{state} {count}" for state, count in queue.items())
    )
    click.echo("")
    rows = [["INSTANCE", "ACCOUNT", "IN FLIGHT", "LIMIT", "OUTSIDE"]]
    rows += [
        [
            i["id"],
            i["account"],
            str(i["in_flight"]),
            str(i["limit"]),
            str(i["external"]),
        ]
        for i in document["instances"]
    ]
    for line in _table(rows):
        click.echo(line)

    click.echo("")
    rows = [["ACCOUNT", "IN FLIGHT", "LIMIT"]]
    rows += [
        [a["id"], str(a["in_flight"]), str(a["limit"])] for a in document["accounts"]
    ]
    for line in _table(rows):
        click.echo(line)


@main.command()
@config_option
@click.option("--job", help="Only this job's runs.")
@click.option(
    "--state", "states", multiple=True, help="Only runs in this state; repeatable."
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
@handled
def history(
    config_path: str | None,
    job: str | None,
    states: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """Recent runs, newest first, with state, window, attempts and outcome."""
    import json

    from .operations import duration_seconds, run_json, window_of
    from .store import RunState
    from .store.history import list_runs

    known = {state.value for state in RunState}
    for state in states:
        if state not in known:
            raise InvalidInput(
                f"--state: unknown {state!r} (known: {', '.join(sorted(known))})"
            )

    loaded = _load(config_path)
    page = _with_db(
        loaded, lambda db: list_runs(db, job=job, states=list(states), limit=limit)
    )
    if as_json:
        for run in page.runs:
            click.echo(json.dumps(run_json(run)))

        return

    if not page.runs:
        click.echo("no runs")
        return

    rows = [
        ["RUN", "JOB", "STATE", "WINDOW", "ATTEMPT", "CREATED", "DURATION", "REASON"]
    ]
    for run in page.runs:
        window = window_of(run)
        span = (
            f"{window['start']}..{window['end']}"
            if "start" in window
            else window["type"]
        )
        seconds = duration_seconds(run)
        rows.append(
            [
                str(run.id),
                run.job,
                run.state,
                str(span),
                f"{run.attempt}/{run.max_attempts}",
                run.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                "" if seconds is None else f"{seconds:.0f}s",
                run.reason or "",
            ]
        )

    for line in _table(rows):
        click.echo(line)


@main.command()
@config_option
@click.argument("run_id", type=int)
@handled
def cancel(config_path: str | None, run_id: int) -> None:
    """Cancel RUN_ID: at once when queued; a submitted run is cancelled at AMC
    by the running daemon (PUT), then marked cancelled."""
    from .operations import request_cancellation

    loaded = _load(config_path)
    run = _with_db(loaded, lambda db: request_cancellation(db, run_id))
    if run.state == "cancelled":
        click.echo(f"cancelled {_describe_run(run)}")
    else:
        click.echo(
            f"cancel requested: {_describe_run(run)}; the daemon cancels it at AMC"
        )
