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
from .errors import ConfigError, SchedulerError

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
