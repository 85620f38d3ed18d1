"""Result files: after SUCCEEDED, fetched under ``results.dir/<job>/<run id>/``.

AMC's download URLs expire after 10 minutes, so they are fetched just before
downloading, and fetched again after a failed download. While AMC says the
results are not available yet the fetch waits and tries again, up to
``results.wait`` after the run finished.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .amc.client import AccountRef
from .amc.errors import AmcError, ResultsNotReady
from .logs import get_logger
from .runtime import Runtime, backoff
from .store.models import RunState, events, result_files, runs
from .store.records import RunRecord

log = get_logger(__name__)
PENDING = "pending"
DONE = "done"
FAILED = "failed"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "file"


def file_name(url: str, index: int, kind: str) -> str:
    name = PurePosixPath(unquote(urlparse(url).path)).name
    return _safe(name) if name else f"{kind}-{index}"


class ResultsFetcher:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._active: set[int] = set()

    @property
    def directory(self) -> Path | None:
        return self.rt.settings.results.dir

    def due(self, run: RunRecord) -> None:
        """A run succeeded: fetch its files in the background."""
        if self.directory is None or run.id in self._active:
            return

        self._active.add(run.id)
        task = self.rt.spawn(self._fetch(run), f"results:{run.id}")
        task.add_done_callback(lambda _: self._active.discard(run.id))

    async def resume(self) -> None:
        """After a restart, pick up fetches that had not finished."""
        if self.directory is None:
            return

        async with self.rt.db.connect() as conn:
            rows = await conn.execute(
                select(runs).where(
                    runs.c.state == RunState.SUCCEEDED.value,
                    runs.c.results_state == PENDING,
                )
            )
            pending = [RunRecord.from_row(row) for row in rows]

        for run in pending:
            self.due(run)

    async def mark_pending(self, run: RunRecord) -> None:
        async with self.rt.db.begin() as conn:
            await conn.execute(
                update(runs).where(runs.c.id == run.id).values(results_state=PENDING)
            )

    async def _fetch(self, run: RunRecord) -> None:
        rt = self.rt
        assert self.directory is not None
        ref = rt.topology.ref(run.account_id)
        if ref is None or run.execution_id is None:
            return

        if run.results_state != PENDING:
            await self.mark_pending(run)

        wait = rt.settings.results.wait.total_seconds()
        finished = run.finished_at or datetime.now(UTC)
        attempt = 0
        while True:
            attempt += 1
            try:
                paths = await self._download(ref, run)
            except ResultsNotReady:
                paths = None
            except AmcError as error:
                log.warning("results_download_failed", run_id=run.id, error=str(error))
                paths = None

            if paths is not None:
                await self._record(run, paths)
                return

            if (datetime.now(UTC) - finished).total_seconds() > wait:
                await self._give_up(run)
                return

            await asyncio.sleep(
                backoff(
                    attempt,
                    rt.config.poll_min.total_seconds(),
                    rt.config.poll_max.total_seconds(),
                )
            )

    async def _download(
        self, ref: AccountRef, run: RunRecord
    ) -> list[tuple[str, Path, int]]:
        assert self.directory is not None
        assert run.execution_id is not None
        urls = await self.rt.client.download_urls(
            ref, run.instance_id, run.execution_id
        )
        target = self.directory / _safe(run.job) / str(run.id)
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        files = []
        for kind, group in (("data", urls.data), ("metadata", urls.metadata)):
            for index, url in enumerate(group):
                path = target / file_name(url, index, kind)
                size = await self.rt.client.download(url, path)
                files.append((kind, path, size))

        return files

    async def _record(self, run: RunRecord, files: list[tuple[str, Path, int]]) -> None:
        async with self.rt.db.begin() as conn:
            await conn.execute(
                update(runs)
                .where(runs.c.id == run.id)
                .values(results_state=DONE, updated_at=func.now())
            )
            if files:
                await conn.execute(
                    insert(result_files),
                    [
                        {
                            "run_id": run.id,
                            "attempt": run.attempt,
                            "name": path.name,
                            "path": str(path),
                            "bytes": size,
                            "kind": kind,
                        }
                        for kind, path, size in files
                    ],
                )

            await self._note(
                conn,
                run,
                "results_downloaded",
                detail={"files": [str(path) for _, path, _ in files]},
            )

        log.info("results_downloaded", run_id=run.id, job=run.job, files=len(files))

    async def _note(
        self, conn: AsyncConnection, run: RunRecord, reason: str, **fields: Any
    ) -> None:
        """An event of a succeeded run that stays succeeded."""
        await conn.execute(
            insert(events).values(
                run_id=run.id,
                from_state=RunState.SUCCEEDED.value,
                to_state=RunState.SUCCEEDED.value,
                reason=reason,
                attempt=run.attempt,
                execution_id=run.execution_id,
                worker_id=self.rt.worker_id,
                **fields,
            )
        )

    async def _give_up(self, run: RunRecord) -> None:
        async with self.rt.db.begin() as conn:
            await conn.execute(
                update(runs).where(runs.c.id == run.id).values(results_state=FAILED)
            )
            await self._note(
                conn,
                run,
                "results_unavailable",
                message="AMC did not make the result files available in time",
            )

        log.error("results_unavailable", run_id=run.id, job=run.job)
