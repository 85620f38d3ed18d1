"""What the dispatcher's parts share while the service runs."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from .amc.client import AmcClient, Execution
from .config import DispatcherSettings, Settings
from .logs import get_logger
from .metrics import Metrics
from .polling import DurationModel
from .store import Database
from .store.models import RunState
from .store.polls import Backlog
from .store.records import RunRecord
from .store.transitions import record_submitted
from .topology import Topology

log = get_logger(__name__)

# An external execution's run time is unknown: a wide model around the default.
EXTERNAL_SIGMA = 1.0


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential, capped, with ±10 % jitter so retries do not line up."""
    delay = min(cap, base * 2.0 ** max(0, attempt - 1))
    return float(delay * random.uniform(0.9, 1.1))


@dataclass
class Runtime:
    db: Database
    client: AmcClient
    settings: Settings
    worker_id: str
    metrics: Metrics
    topology: Topology = field(init=False)
    models: dict[str, DurationModel] = field(default_factory=dict)
    backlog: dict[str, Backlog] = field(default_factory=dict)
    wake_admission: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.topology = Topology.from_settings(self.settings)

    @property
    def config(self) -> DispatcherSettings:
        return self.settings.dispatcher

    def reload(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology.from_settings(settings)

    def default_model(self, job: str) -> DurationModel:
        try:
            configured = self.settings.job(job).expected_duration
        except KeyError:
            configured = None

        median = (configured or self.config.expected_duration).total_seconds()
        return DurationModel(median=median)

    def model_for(self, job: str) -> DurationModel:
        return self.models.get(job) or self.default_model(job)

    def external_model(self) -> DurationModel:
        median = self.config.expected_duration.total_seconds()
        return DurationModel(median=median, sigma=EXTERNAL_SIGMA)

    def urgent(self, instance_id: str) -> bool:
        """Whether runs wait for slots this instance's executions hold."""
        account_id = self.topology.instance_accounts.get(instance_id)
        if account_id is None:
            return False

        return any(
            self.backlog.get(other, Backlog(0, 0.0)).due > 0
            for other in self.topology.instances_of(account_id)
        )

    def slot_freed(self) -> None:
        self.wake_admission.set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, kept until done, failures logged."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return

        error = task.exception()
        if error is not None:
            self.metrics.loop_failures.labels(task.get_name().split(":")[0]).inc()
            log.error("task_failed", task=task.get_name(), error=repr(error))


async def record_execution(
    rt: Runtime,
    run: RunRecord,
    execution: Execution,
    *,
    owner: str | None,
    adopted: bool = False,
    expect: Sequence[RunState] = (RunState.SUBMITTING,),
) -> RunRecord | None:
    """Give ``run`` the AMC execution it created (or one found for it)."""
    return await record_submitted(
        rt.db,
        run,
        owner=owner,
        execution_id=execution.id,
        amc_status=execution.status,
        amc_create_time=execution.create_time,
        adopted=adopted,
        expect=expect,
        worker_id=rt.worker_id,
    )


def every(seconds: float) -> float:
    """A loop period with jitter, so replicas do not tick together."""
    return seconds * random.uniform(0.9, 1.1)


Sleep = Callable[[float], Coroutine[Any, Any, None]]
