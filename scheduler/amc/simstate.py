"""The AMC simulator's model: executions on a clock, parallel limits, privacy, stats.

An execution is a planned timeline fixed when it is created: PENDING from
``created`` to ``started``, RUNNING to ``ended``, then its decided terminal
status. Statuses are read off the clock when asked, so nothing runs in the
background; a cancel moves ``ended`` to that moment. Run times are drawn in
simulated seconds and divided by ``speed``; every timestamp reported is real
wall-clock UTC, because the scheduler compares them with its own clock.

Deliberate simplifications, each a guess where AMC's public record is silent:

* the privacy rule counts executions on one instance with exactly the same
  resolved window, where AMC speaks of "the same or overlapping" windows;
* window types other than EXPLICIT resolve against the real date at creation
  (MOST_RECENT_DAY is yesterday in the window's zone, and so on);
* executions started "from the UI" bypass the limits, as work started outside
  the API would; the stats' ``limit_violations`` shows what they caused;
* random draws come from three generators seeded from ``seed`` (run times,
  faults, identifiers), so turning faults on leaves run times unchanged;
* a create is rejected or admitted at the moment it arrives: AMC's own queue
  past the parallel limit is not modelled, an over-limit create is refused.

The clock must never go backwards: finished executions are pruned from the
in-flight counts as time passes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .simoptions import SimulatorOptions, plan_key
from .simwire import CreateRequest, Rejected, Window, WindowKey, resolve_window

Clock = Callable[[], float]

STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
REQUEST_KINDS = (
    "token",
    "create",
    "list",
    "get",
    "cancel",
    "download_urls",
    "download",
    "accounts",
    "instances",
    "other",
)
REJECTION_KINDS = ("limit", "privacy", "invalid", "auth")
FAULT_KINDS = ("slow", "throttle", "server_error", "malformed", "after_create")
DEFAULT_TIMEOUT_SECONDS = 21600
DEFAULT_ACCOUNT = "ENTITYSIMULATOR"
DOWNLOAD_URL_LIFETIME = 600.0
# Simulated seconds a privacy-rejected execution stays PENDING in "status" mode.
PRIVACY_CHECK_SECONDS = 30.0
INTERNAL_ERROR = (
    "Internal error: the execution failed unexpectedly; retry the execution"
)
PRIVACY_MESSAGE = (
    'Execution "{execution}" of workflow "{workflow}" could not be run because'
    " too many workflows have already been run against the same input data"
    " sources in the same or overlapping time windows."
)


@dataclass(eq=False)
class Execution:
    """One execution's fixed plan; times are clock seconds (see SimState.now)."""

    seq: int
    id: str
    instance_id: str
    account_id: str
    workflow_id: str
    origin: Literal["api", "ui"]
    window: Window
    created: float
    started: float
    ended: float
    final_status: str
    status_reason: str | None = None
    sql: str | None = None
    parameter_values: Mapping[str, Any] = field(default_factory=dict)
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    extras: Mapping[str, Any] = field(default_factory=dict)
    identity: str = ""
    privacy_failed: bool = False
    cancelled: float | None = None

    def status(self, now: float) -> str:
        if self.cancelled is not None and now >= self.cancelled:
            return "CANCELLED"

        if now < self.started:
            return "PENDING"

        if now < self.ended:
            return "RUNNING"

        return self.final_status

    def in_flight(self, now: float) -> bool:
        return now < self.ended

    def last_updated(self, now: float) -> float:
        """The last change of status at or before ``now``."""
        changes = (self.created, min(self.started, self.ended), self.ended)
        return max(
            (moment for moment in changes if moment <= now), default=self.created
        )


def identity_of(
    instance_id: str, workflow: str, window: Window, values: Mapping[str, Any]
) -> str:
    """What makes two executions the same work: a blind retry repeats all of it."""
    return json.dumps(
        [instance_id, workflow, *window.key(), values],
        sort_keys=True,
        separators=(",", ":"),
    )


def _peak(intervals: Sequence[tuple[float, float]], limit: int) -> tuple[int, int]:
    """Highest overlap of half-open intervals, and how often it rose past ``limit``."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals]
    )
    current = peak = violations = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
        if step > 0 and current > limit:
            violations += 1

    return peak, violations


class SimState:
    """Every execution, token and counter of one simulated AMC."""

    def __init__(self, options: SimulatorOptions, clock: Clock) -> None:
        self.options = options
        self.faults = options.faults
        self._clock = clock
        self._wall_offset = time.time() - clock()
        seeds = random.Random(options.seed)
        self.durations_rng = random.Random(seeds.getrandbits(64))
        self.faults_rng = random.Random(seeds.getrandbits(64))
        self._ids_rng = random.Random(seeds.getrandbits(64))
        self._signing_key = self._ids_rng.getrandbits(256).to_bytes(32, "big")
        self._tokens: dict[str, float] = {}
        self._executions: dict[str, Execution] = {}
        self._by_instance: defaultdict[str, list[Execution]] = defaultdict(list)
        self._by_window: defaultdict[tuple[str, WindowKey], list[Execution]] = (
            defaultdict(list)
        )
        self._by_identity: defaultdict[str, list[Execution]] = defaultdict(list)
        self._flight: defaultdict[tuple[str, str], list[Execution]] = defaultdict(list)
        self._seen_accounts: dict[str, str] = {}
        self._instance_accounts: dict[str, str] = {}
        self.requests: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.fault_counts: Counter[str] = Counter()
        self.duplicates = 0

    # The clock

    def now(self) -> float:
        return self._clock()

    def wall(self, moment: float) -> float:
        """Real epoch seconds of a clock reading."""
        return moment + self._wall_offset

    def wall_time(self, moment: float) -> datetime:
        return datetime.fromtimestamp(self.wall(moment), UTC)

    def timestamp(self, moment: float) -> str:
        """A clock reading as AMC writes times: ``2026-05-20T12:34:56.789Z``."""
        instant = self.wall_time(moment)
        return (
            instant.strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{instant.microsecond // 1000:03d}Z"
        )

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{self._ids_rng.getrandbits(64):016x}"

    # Access tokens

    def issue_token(self) -> str:
        token = "Atza|" + f"{self._ids_rng.getrandbits(192):048x}"
        self._tokens[token] = self.now() + self.options.token_lifetime
        return token

    def token_valid(self, token: str) -> bool:
        expires = self._tokens.get(token)
        return expires is not None and self.now() < expires

    # Accounts and instances

    def account_for(self, advertiser: str | None, marketplace: str | None) -> str:
        """The account a request acts for, from its advertiser and marketplace."""
        if not advertiser:
            raise Rejected(
                400, "Missing header Amazon-Advertising-API-AdvertiserId", "auth"
            )

        spec = self.options.accounts.get(advertiser)
        if self.options.accounts and spec is None:
            raise Rejected(
                403, f"Advertiser {advertiser} is not an AMC account", "auth"
            )

        if not marketplace:
            raise Rejected(
                400, "Missing header Amazon-Advertising-API-MarketplaceId", "auth"
            )

        if spec is not None and marketplace != spec.marketplace_id:
            raise Rejected(
                400,
                f"Marketplace {marketplace} does not belong to account {advertiser}",
                "auth",
            )

        self._seen_accounts.setdefault(advertiser, marketplace)
        return advertiser

    def check_instance(self, account_id: str, instance_id: str) -> None:
        spec = self.options.accounts.get(account_id)
        if self.options.accounts and (
            spec is None or instance_id not in spec.instances
        ):
            raise Rejected(404, f"Instance {instance_id} not found")

        self._instance_accounts.setdefault(instance_id, account_id)

    def accounts(self) -> list[tuple[str, str]]:
        """(account id, marketplace id) of every account this AMC knows."""
        if self.options.accounts:
            return [
                (key, spec.marketplace_id)
                for key, spec in self.options.accounts.items()
            ]

        return list(self._seen_accounts.items())

    def instances(self, account_id: str) -> list[str]:
        spec = self.options.accounts.get(account_id)
        if spec is not None:
            return list(spec.instances)

        return [
            key for key, owner in self._instance_accounts.items() if owner == account_id
        ]

    def instance_limit(self, instance_id: str) -> int:
        for spec in self.options.accounts.values():
            if instance_id in spec.instances:
                return spec.instances[instance_id]

        return self.options.instance_limit

    def account_limit(self, account_id: str) -> int:
        spec = self.options.accounts.get(account_id)
        return spec.max_parallel if spec is not None else self.options.account_limit

    def _owner(self, instance_id: str, account_id: str | None) -> str:
        for key, spec in self.options.accounts.items():
            if instance_id in spec.instances:
                return key

        if self.options.accounts:
            raise Rejected(404, f"Instance {instance_id} not found")

        return account_id or self._instance_accounts.get(instance_id, DEFAULT_ACCOUNT)

    # Creating executions

    def in_flight(self, scope: str, key: str, now: float) -> int:
        live = [item for item in self._flight[scope, key] if item.in_flight(now)]
        self._flight[scope, key] = live
        return len(live)

    def _check_limits(self, instance_id: str, account_id: str, now: float) -> None:
        for scope, key, limit in (
            ("instance", instance_id, self.instance_limit(instance_id)),
            ("account", account_id, self.account_limit(account_id)),
        ):
            running = self.in_flight(scope, key, now)
            if running >= limit:
                self.rejected["limit"] += 1
                raise Rejected(
                    self.options.limit_status,
                    f"Too many concurrent executions: the {scope} already has"
                    f" {running} executions running in parallel (limit {limit})",
                    "limit",
                )

    def _privacy_exhausted(self, instance_id: str, window: Window) -> bool:
        earlier = self._by_window[instance_id, window.key()]
        counted = [e for e in earlier if not e.privacy_failed and e.cancelled is None]
        return len(counted) >= self.options.privacy_repeats

    def _run_time(
        self, instance_id: str, workflow_id: str, request: CreateRequest
    ) -> float:
        """A log-normal run time around the workflow's median, in simulated seconds."""
        key = plan_key(instance_id, workflow_id, request.window_start)
        planned = self.options.planned_durations.get(key)
        if planned is not None:
            return planned

        median = self.options.workflow_durations.get(workflow_id, self.options.duration)
        noise = math.exp(
            self.options.duration_sigma * self.durations_rng.gauss(0.0, 1.0)
        )
        return min(median * noise, median * self.options.max_duration_factor)

    def create(
        self, instance_id: str, account_id: str, request: CreateRequest
    ) -> Execution:
        """Admit, reject or doom a create, as AMC would; raises Rejected."""
        now = self.now()
        self._check_limits(instance_id, account_id, now)
        execution_id = self.new_id("sim-")
        workflow_id = request.workflow_id or self.new_id("adhoc-")
        window = resolve_window(request, self.wall_time(now))
        message = None
        if self._privacy_exhausted(instance_id, window):
            message = PRIVACY_MESSAGE.format(
                execution=execution_id, workflow=workflow_id
            )
            self.rejected["privacy"] += 1
            if self.options.privacy_mode == "create":
                raise Rejected(400, message, "privacy")

        # The plan: run time, failure and timeout are decided now, in simulated s.
        run = self._run_time(instance_id, workflow_id, request)
        failed = self.durations_rng.random() < self.options.failure_rate
        status, reason = ("FAILED", INTERNAL_ERROR) if failed else ("SUCCEEDED", None)
        pending = run * self.options.pending_share
        timeout = request.timeout_seconds or DEFAULT_TIMEOUT_SECONDS
        if timeout < run:
            run, pending = timeout, min(pending, timeout)
            status = "FAILED"
            reason = f"Execution timed out after {timeout} seconds"

        if message is not None:
            run = pending = PRIVACY_CHECK_SECONDS
            status, reason = "FAILED", message

        workflow_key = (
            f"workflow:{workflow_id}"
            if request.sql is None
            else "sql:" + " ".join(request.sql.split())
        )
        identity = identity_of(
            instance_id, workflow_key, window, request.parameter_values
        )
        if any(
            e.in_flight(now) or e.status(now) == "SUCCEEDED"
            for e in self._by_identity[identity]
        ):
            self.duplicates += 1

        speed = self.options.speed
        execution = Execution(
            seq=len(self._executions),
            id=execution_id,
            instance_id=instance_id,
            account_id=account_id,
            workflow_id=workflow_id,
            origin="api",
            window=window,
            created=now,
            started=now + pending / speed,
            ended=now + run / speed,
            final_status=status,
            status_reason=reason,
            sql=request.sql,
            parameter_values=request.parameter_values,
            timeout_seconds=timeout,
            extras=request.extras,
            identity=identity,
            privacy_failed=message is not None,
        )
        self._add(execution)
        self._by_identity[identity].append(execution)
        return execution

    def add_ui_executions(
        self, instance_id: str, count: int, duration: float, account_id: str | None
    ) -> list[str]:
        """Executions started outside the API: they take slots and ignore limits."""
        if count < 0 or duration <= 0:
            raise Rejected(400, "count must not be negative, duration must be positive")

        owner = self._owner(instance_id, account_id)
        now = self.now()
        window = resolve_window(CreateRequest(), self.wall_time(now))
        speed = self.options.speed
        ids = []
        for _ in range(count):
            execution = Execution(
                seq=len(self._executions),
                id=self.new_id("sim-ui-"),
                instance_id=instance_id,
                account_id=owner,
                workflow_id="ui-query",
                origin="ui",
                window=window,
                created=now,
                started=now + duration * self.options.pending_share / speed,
                ended=now + duration / speed,
                final_status="SUCCEEDED",
                sql="SELECT 1",
            )
            self._add(execution)
            ids.append(execution.id)

        return ids

    def _add(self, execution: Execution) -> None:
        self._executions[execution.id] = execution
        self._by_instance[execution.instance_id].append(execution)
        self._by_window[execution.instance_id, execution.window.key()].append(execution)
        self._flight["instance", execution.instance_id].append(execution)
        self._flight["account", execution.account_id].append(execution)

    # Reading and changing executions

    def get(self, instance_id: str, execution_id: str) -> Execution:
        execution = self._executions.get(execution_id)
        if execution is None or execution.instance_id != instance_id:
            raise Rejected(404, f"Execution {execution_id} not found")

        return execution

    def cancel(self, instance_id: str, execution_id: str) -> Execution:
        execution = self.get(instance_id, execution_id)
        now = self.now()
        if not execution.in_flight(now):
            raise Rejected(
                400,
                f"Execution {execution_id} is {execution.status(now)}"
                " and can no longer be cancelled",
            )

        execution.cancelled = now
        execution.ended = now
        execution.final_status = "CANCELLED"
        execution.status_reason = None
        return execution

    def page(
        self,
        instance_id: str,
        *,
        min_created: datetime | None = None,
        max_created: datetime | None = None,
        workflow_id: str | None = None,
        include_cancelled: bool = False,
        ascending: bool = False,
        limit: int | None = None,
        after: int | None = None,
    ) -> tuple[list[Execution], int | None]:
        """One page in creation order; the cursor is the last sequence number."""
        now = self.now()
        page_size = limit or self.options.page_size
        items = self._by_instance.get(instance_id, [])
        ordered = items if ascending else list(reversed(items))
        found: list[Execution] = []
        for execution in ordered:
            if after is not None and (
                execution.seq <= after if ascending else execution.seq >= after
            ):
                continue

            created = self.wall_time(execution.created).replace(microsecond=0)
            if (
                (min_created is not None and created < min_created)
                or (max_created is not None and created > max_created)
                or (workflow_id is not None and execution.workflow_id != workflow_id)
                or (not include_cancelled and execution.status(now) == "CANCELLED")
            ):
                continue

            if len(found) == page_size:
                return found, found[-1].seq

            found.append(execution)

        return found, None

    def results_ready(self, execution: Execution) -> bool:
        now = self.now()
        delay = self.options.results_delay / self.options.speed
        return execution.status(now) == "SUCCEEDED" and now >= execution.ended + delay

    # Signed result-file tokens

    def sign_file(self, execution_id: str, name: str) -> str:
        expires = self.now() + DOWNLOAD_URL_LIFETIME
        payload = json.dumps([execution_id, name, expires]).encode()
        encoded = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{encoded}.{self._signature(encoded)}"

    def open_file(self, token: str, name: str) -> Execution:
        """The execution a file token grants; 403 when forged, altered or expired."""
        encoded, _, signature = token.partition(".")
        expected = self._signature(encoded).encode()
        if not hmac.compare_digest(signature.encode(), expected):
            raise Rejected(403, "Request has expired or the signature does not match")

        padded = encoded + "=" * (-len(encoded) % 4)
        execution_id, signed_name, expires = json.loads(
            base64.urlsafe_b64decode(padded)
        )
        if signed_name != name or self.now() >= expires:
            raise Rejected(403, "Request has expired or the signature does not match")

        return self._executions[execution_id]

    def _signature(self, encoded: str) -> str:
        digest = hmac.new(self._signing_key, encoded.encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    # Inspection

    def all_executions(self) -> list[Execution]:
        return list(self._executions.values())

    def stats(self) -> dict[str, Any]:
        now = self.now()
        executions = self.all_executions()
        by_status = Counter(execution.status(now) for execution in executions)
        peaks: dict[str, dict[str, int]] = {"instances": {}, "accounts": {}}
        violations = 0
        for scope, limit_of in (
            ("instances", self.instance_limit),
            ("accounts", self.account_limit),
        ):
            intervals: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
            for e in executions:
                key = e.instance_id if scope == "instances" else e.account_id
                intervals[key].append((e.created, e.ended))

            for key, spans in sorted(intervals.items()):
                peaks[scope][key], over = _peak(spans, limit_of(key))
                violations += over

        return {
            "requests": {kind: self.requests[kind] for kind in REQUEST_KINDS},
            "rejected_creates": {kind: self.rejected[kind] for kind in REJECTION_KINDS},
            "duplicates": self.duplicates,
            "max_concurrency": peaks,
            "limit_violations": violations,
            "executions": {
                "total": len(executions),
                "by_status": {status: by_status[status] for status in STATUSES},
                "by_origin": dict(Counter(e.origin for e in executions)),
            },
            "faults": {kind: self.fault_counts[kind] for kind in FAULT_KINDS},
            "speed": self.options.speed,
        }
