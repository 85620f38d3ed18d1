"""The AMC reporting API over one aiohttp session.

Reads (get, list, download URLs, downloads) are retried on transient errors
and throttles with bounded, jittered backoff. A create is never repeated
here, except once after a 401 (which AMC answers before doing anything):
whether to submit again after an ambiguous failure is the dispatcher's
decision, made after looking the execution up.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from ..logs import get_logger
from .auth import Credentials, TokenProvider
from .errors import (
    AmcError,
    AmcNotFound,
    AuthenticationFailed,
    InvalidRequest,
    LimitReached,
    PrivacyRejected,
    ResultsNotReady,
    Throttled,
    TransientError,
    classify,
    is_expired_token_message,
    parse_error_body,
)
from .pacing import Pacer

log = get_logger(__name__)

IN_FLIGHT_STATUSES = frozenset({"PENDING", "RUNNING", "PUBLISHING"})
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"})
QUERY_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
ACCEPT = "application/vnd.amcworkflowexecutions.v1+json, application/json;q=0.9"
_REASON_FIELDS = ("statusReason", "errorReason", "message", "details")

Observer = Callable[[str, str, float], None]


@dataclass(frozen=True)
class AccountRef:
    """What AMC's headers need to know about an account."""

    id: str
    marketplace_id: str


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None

    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass(frozen=True)
class Execution:
    """An AMC workflow execution, parsed tolerantly; ``raw`` keeps the rest."""

    id: str
    status: str
    workflow_id: str | None = None
    create_time: datetime | None = None
    last_updated_time: datetime | None = None
    reason: str | None = None
    time_window_type: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    window_start_original: str | None = None
    window_end_original: str | None = None
    time_zone_original: str | None = None
    parameter_values: Mapping[str, Any] = field(default_factory=dict)
    timeout_seconds: int | None = None
    sql: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def in_flight(self) -> bool:
        """PENDING, RUNNING, PUBLISHING, and any status AMC adds later."""
        return self.status not in TERMINAL_STATUSES

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, document: Any) -> Execution:
        """Accept the flat object of every sample and the wrapped OpenAPI form."""
        if isinstance(document, dict) and isinstance(
            document.get("workflowExecution"), dict
        ):
            document = document["workflowExecution"]

        if not isinstance(document, dict) or not document.get("workflowExecutionId"):
            raise ValueError("no workflowExecutionId in the answer")

        reason = next(
            (
                str(document[key])
                for key in _REASON_FIELDS
                if isinstance(document.get(key), str) and document[key]
            ),
            None,
        )
        workflow = document.get("workflow")
        sql = workflow.get("sqlQuery") if isinstance(workflow, dict) else None
        timeout = document.get("workflowExecutionTimeoutSeconds")
        parameters = document.get("parameterValues")
        return cls(
            id=str(document["workflowExecutionId"]),
            status=str(document.get("status") or "PENDING").upper(),
            workflow_id=document.get("workflowId"),
            create_time=_time(document.get("createTime")),
            last_updated_time=_time(document.get("lastUpdatedTime")),
            reason=reason,
            time_window_type=document.get("timeWindowType"),
            window_start=_time(document.get("timeWindowStart")),
            window_end=_time(document.get("timeWindowEnd")),
            window_start_original=document.get("timeWindowStartOriginal"),
            window_end_original=document.get("timeWindowEndOriginal"),
            time_zone_original=document.get("timeWindowTimeZoneOriginal"),
            parameter_values=parameters if isinstance(parameters, dict) else {},
            timeout_seconds=int(timeout) if isinstance(timeout, int | float) else None,
            sql=sql if isinstance(sql, str) else None,
            raw=document,
        )


@dataclass(frozen=True)
class DownloadUrls:
    data: list[str]
    metadata: list[str]


@dataclass(frozen=True)
class RetryPolicy:
    """How reads are retried: ``attempts`` in all, delays capped and jittered."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 20.0
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after) * random.uniform(1.0, 1.1)

        backoff: float = min(self.cap, self.base * 2.0**attempt)
        return backoff * random.uniform(0.5, 1.0)


_OUTCOMES: tuple[tuple[type[AmcError], str], ...] = (
    (LimitReached, "limit"),
    (Throttled, "throttled"),
    (PrivacyRejected, "privacy"),
    (AuthenticationFailed, "auth"),
    (AmcNotFound, "not_found"),
    (ResultsNotReady, "not_ready"),
    (InvalidRequest, "invalid"),
    (TransientError, "transient"),
)


def outcome_of(error: AmcError | None) -> str:
    if error is None:
        return "ok"

    for kind, name in _OUTCOMES:
        if isinstance(error, kind):
            return name

    return "error"


class AmcClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        tokens: TokenProvider,
        pacer: Pacer,
        *,
        retry: RetryPolicy | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._pacer = pacer
        self._retry = retry or RetryPolicy()
        self.observer = observer

    def _headers(self, account: AccountRef, token: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "Amazon-Advertising-API-ClientId": self._tokens.client_id,
            "Amazon-Advertising-API-AdvertiserId": account.id,
            "Amazon-Advertising-API-MarketplaceId": account.marketplace_id,
            "Content-Type": "application/json",
            "Accept": ACCEPT,
        }

    def _url(self, instance_id: str, path: str) -> str:
        return f"{self._base_url}/amc/reporting/{quote(instance_id, safe='')}/{path}"

    def _observe(self, call: str, error: AmcError | None, started: float) -> None:
        if self.observer is not None:
            self.observer(call, outcome_of(error), time.monotonic() - started)

    async def _send(
        self,
        method: str,
        url: str,
        account: AccountRef,
        *,
        call: str,
        body: Any,
        params: Mapping[str, str] | None,
        is_create: bool,
    ) -> Any:
        """One request, with one refresh-and-repeat after a 401."""
        refreshed = False
        while True:
            await self._pacer.bucket(account.id).acquire()
            token = await self._tokens.token()
            try:
                async with self._session.request(
                    method,
                    url,
                    headers=self._headers(account, token),
                    data=None if body is None else json.dumps(body),
                    params=params,
                ) as response:
                    status = response.status
                    text = await response.text()
                    retry_after = response.headers.get("Retry-After")
            except aiohttp.ClientConnectorError as exc:
                raise TransientError(
                    f"{call}: cannot connect to AMC: {exc.os_error}", call=call
                ) from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransientError(
                    f"{call}: {type(exc).__name__} talking to AMC",
                    call=call,
                    ambiguous=is_create,
                ) from None

            if not refreshed and (
                status == 401 or (status == 403 and is_expired_token_message(text))
            ):
                refreshed = True
                await self._tokens.refresh(stale=token)
                continue

            if 200 <= status < 300:
                try:
                    return json.loads(text) if text.strip() else {}
                except ValueError:
                    raise TransientError(
                        f"{call}: unreadable answer from AMC (HTTP {status})",
                        call=call,
                        status=status,
                        ambiguous=is_create,
                    ) from None

            raise classify(
                status, text, call=call, retry_after=retry_after, is_create=is_create
            )

    async def _call(
        self,
        method: str,
        account: AccountRef,
        url: str,
        *,
        call: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> Any:
        is_create = call == "create"
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                result = await self._send(
                    method,
                    url,
                    account,
                    call=call,
                    body=body,
                    params=params,
                    is_create=is_create,
                )
            except AmcError as error:
                self._observe(call, error, started)
                delay = getattr(error, "retry_after", None)
                if isinstance(error, Throttled | LimitReached) and delay:
                    self._pacer.bucket(account.id).pause(
                        min(delay, self._retry.max_retry_after)
                    )

                attempt += 1
                retryable = isinstance(error, TransientError | Throttled)
                if not retry or not retryable or attempt >= self._retry.attempts:
                    raise

                wait = self._retry.delay(attempt - 1, delay)
                log.debug(
                    "amc_call_retried",
                    call=call,
                    attempt=attempt,
                    wait=round(wait, 3),
                    error=str(error),
                )
                await asyncio.sleep(wait)
                continue

            self._observe(call, None, started)
            return result

    # The calls

    async def create_execution(
        self, account: AccountRef, instance_id: str, body: Mapping[str, Any]
    ) -> Execution:
        """Submit an execution. Never repeated here: see the module docstring."""
        document = await self._call(
            "POST",
            account,
            self._url(instance_id, "workflowExecutions"),
            call="create",
            body=dict(body),
            retry=False,
        )
        try:
            return Execution.from_json(document)
        except ValueError:
            raise TransientError(
                "create: the answer has no execution id", call="create", ambiguous=True
            ) from None

    async def get_execution(
        self,
        account: AccountRef,
        instance_id: str,
        execution_id: str,
        *,
        include_workflow: bool = False,
    ) -> Execution:
        params = {"includeWorkflow": "true"} if include_workflow else None
        document = await self._call(
            "GET",
            account,
            self._url(instance_id, f"workflowExecutions/{quote(execution_id)}"),
            call="get",
            params=params,
        )
        return self._execution(document, "get")

    @staticmethod
    def _execution(document: Any, call: str) -> Execution:
        try:
            return Execution.from_json(document)
        except ValueError:
            raise TransientError(
                f"{call}: the answer has no execution", call=call
            ) from None

    async def list_executions(
        self,
        account: AccountRef,
        instance_id: str,
        *,
        min_creation_time: datetime,
        max_creation_time: datetime | None = None,
        workflow_id: str | None = None,
        include_cancelled: bool = True,
        sort_ascending: bool | None = None,
        page_size: int | None = None,
        max_pages: int = 200,
    ) -> AsyncIterator[Execution]:
        """Every execution created in the range, following ``nextToken``."""
        params: dict[str, str] = {
            "minCreationTime": min_creation_time.astimezone(UTC).strftime(
                QUERY_TIME_FORMAT
            ),
            "includeCancelled": "true" if include_cancelled else "false",
        }
        if max_creation_time is not None:
            params["maxCreationTime"] = max_creation_time.astimezone(UTC).strftime(
                QUERY_TIME_FORMAT
            )

        if workflow_id is not None:
            params["workflowId"] = workflow_id

        if sort_ascending is not None:
            params["sortAscending"] = "true" if sort_ascending else "false"

        if page_size is not None:
            params["limit"] = str(page_size)

        seen: set[str] = set()
        url = self._url(instance_id, "workflowExecutions")
        for _ in range(max_pages):
            document = await self._call("GET", account, url, call="list", params=params)
            if not isinstance(document, dict):
                raise TransientError("list: unexpected answer", call="list")

            for item in document.get("executions") or []:
                try:
                    yield Execution.from_json(item)
                except ValueError:
                    log.warning("execution_unparsed", instance_id=instance_id)

            token = document.get("nextToken")
            if not token or token in seen:
                return

            seen.add(token)
            params = {**params, "nextToken": str(token)}

        log.warning("list_truncated", instance_id=instance_id, pages=max_pages)

    async def cancel_execution(
        self, account: AccountRef, instance_id: str, execution_id: str
    ) -> Execution | None:
        """Cancel with PUT; None when AMC refuses because it is already terminal."""
        try:
            document = await self._call(
                "PUT",
                account,
                self._url(instance_id, f"workflowExecutions/{quote(execution_id)}"),
                call="cancel",
                body={"status": "CANCELLED"},
            )
        except InvalidRequest:
            return None

        try:
            return Execution.from_json(document)
        except ValueError:
            return None

    async def download_urls(
        self, account: AccountRef, instance_id: str, execution_id: str
    ) -> DownloadUrls:
        """Result file URLs; they expire after 10 minutes, so fetch just before use."""
        path = f"workflowExecutions/{quote(execution_id)}/downloadUrls"
        document = await self._call(
            "GET", account, self._url(instance_id, path), call="download_urls"
        )
        if not isinstance(document, dict):
            raise TransientError(
                "download_urls: unexpected answer", call="download_urls"
            )

        return DownloadUrls(
            data=[str(url) for url in document.get("downloadUrls") or []],
            metadata=[str(url) for url in document.get("metadataDownloadUrls") or []],
        )

    async def download(self, url: str, destination: Path) -> int:
        """Fetch a result file to ``destination``; returns its size in bytes.

        The URL is pre-signed: no AMC headers go with it. The file appears
        whole or not at all.
        """
        partial = destination.with_name(destination.name + ".part")
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                size = await self._fetch(url, partial)
            except AmcError as error:
                self._observe("download", error, started)
                attempt += 1
                # An expired or missing URL fails the same way again: the caller
                # fetches fresh URLs instead.
                gone = error.status is not None and error.status < 500
                if gone or attempt >= self._retry.attempts:
                    partial.unlink(missing_ok=True)
                    raise

                await asyncio.sleep(self._retry.delay(attempt - 1))
                continue

            self._observe("download", None, started)
            os.replace(partial, destination)
            return size

    async def _fetch(self, url: str, partial: Path) -> int:
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    _, text = parse_error_body(await response.text())
                    raise TransientError(
                        f"download: HTTP {response.status}: {text}",
                        call="download",
                        status=response.status,
                    )

                size = 0
                with partial.open("wb") as handle:
                    async for chunk in response.content.iter_chunked(1 << 16):
                        handle.write(chunk)
                        size += len(chunk)

                return size
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(
                f"download: {type(exc).__name__}", call="download"
            ) from None

    async def close(self) -> None:
        await self._session.close()


def new_session(timeout: float, max_connections: int) -> aiohttp.ClientSession:
    """The one session of a service: bounded pool, total and connect timeouts."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10.0)),
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
        raise_for_status=False,
    )


def build_client(
    *,
    api_url: str,
    token_url: str,
    credentials: Credentials,
    timeout: float = 30.0,
    max_connections: int = 32,
    requests_per_second: float = 5.0,
    burst: int = 20,
    retry: RetryPolicy | None = None,
    observer: Observer | None = None,
) -> AmcClient:
    """A client with its own session; close it with ``await client.close()``."""
    session = new_session(timeout, max_connections)
    tokens = TokenProvider(session, token_url, credentials)
    return AmcClient(
        session,
        api_url,
        tokens,
        Pacer(requests_per_second, burst),
        retry=retry,
        observer=observer,
    )
