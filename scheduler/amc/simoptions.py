"""The simulator's options, and how the config file's settings map to them.

Durations are simulated seconds (divided by ``speed`` before they pass)
unless a field says REAL seconds: the token lifetime and the slow-answer
delay are felt by the client as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..config import AccountSettings, SimulatorSettings

_RATES = (
    "server_error_rate",
    "after_create_share",
    "throttle_rate",
    "malformed_rate",
    "slow_rate",
)


@dataclass(frozen=True)
class FaultOptions:
    """Seeded faults, each a share of AMC API requests (never /sim/ or tokens)."""

    server_error_rate: float = 0.0
    after_create_share: float = 0.5
    throttle_rate: float = 0.0
    retry_after: float = 1.0  # REAL seconds, sent as the throttle's Retry-After
    malformed_rate: float = 0.0
    slow_rate: float = 0.0
    slow_by: float = 2.0  # REAL seconds a slow answer is held back

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")

        if self.retry_after < 0 or self.slow_by < 0:
            raise ValueError("retry_after and slow_by must not be negative")


@dataclass(frozen=True)
class AccountSpec:
    """One configured account: its marketplace, its limit, its instances' limits."""

    marketplace_id: str
    max_parallel: int = 200
    instances: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SimulatorOptions:
    """How the simulated AMC behaves; durations are simulated seconds unless noted."""

    speed: float = 60.0  # simulated seconds per real second
    seed: int = 0
    duration: float = 1200.0
    duration_sigma: float = 0.3
    max_duration_factor: float = 4.0
    workflow_durations: Mapping[str, float] = field(default_factory=dict)
    # Fixed run times (simulated s) by plan_key(), so that a benchmark can
    # replay one workload against several strategies.
    planned_durations: Mapping[str, float] = field(default_factory=dict)
    pending_share: float = 0.05  # share of each run spent PENDING
    failure_rate: float = 0.0
    privacy_repeats: int = 5  # executions per exact window before the rejection
    privacy_mode: Literal["create", "status"] = "create"
    limit_status: int = 429
    instance_limit: int = 10
    account_limit: int = 200
    token_lifetime: float = 3600.0  # REAL seconds
    client_id: str = "sim-client-id"
    client_secret: str = "sim-client-secret"
    refresh_token: str = "Atzr|sim-refresh-token"
    page_size: int = 25
    results_delay: float = 30.0
    # Empty: any advertiser, marketplace and instance is accepted.
    accounts: Mapping[str, AccountSpec] = field(default_factory=dict)
    faults: FaultOptions = field(default_factory=FaultOptions)

    def __post_init__(self) -> None:
        if self.speed <= 0 or self.duration <= 0 or self.max_duration_factor < 1:
            raise ValueError("speed and duration must be positive, max factor >= 1")

        if not 0.0 <= self.pending_share < 1.0 or not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("pending_share must be in [0, 1), failure_rate in [0, 1]")

        if self.page_size < 1 or self.privacy_repeats < 0:
            raise ValueError("page_size must be positive, privacy_repeats not negative")

        if not 400 <= self.limit_status <= 599:
            raise ValueError(
                f"limit_status must be an HTTP error, not {self.limit_status}"
            )


# Settings from the config file

# Options the config sections do not have (yet); mapped once they gain them.
_OPTIONAL_SETTINGS = (
    "max_duration_factor",
    "workflow_durations",
    "pending_share",
    "privacy_mode",
    "limit_status",
    "instance_limit",
    "account_limit",
    "page_size",
    "results_delay",
)
_OPTIONAL_FAULT_SETTINGS = ("retry_after",)


def _plain(value: Any) -> Any:
    """Config values as options take them: timedeltas in seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()

    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}

    return value


def _optional(section: object, names: Sequence[str]) -> dict[str, Any]:
    found = {name: getattr(section, name, None) for name in names}
    return {name: _plain(value) for name, value in found.items() if value is not None}


def options_from_settings(
    settings: SimulatorSettings, accounts: Sequence[AccountSettings]
) -> SimulatorOptions:
    """The config file's simulator section and accounts as SimulatorOptions."""
    faults = settings.faults
    fault_options = FaultOptions(
        server_error_rate=faults.server_error_rate,
        after_create_share=faults.after_create_share,
        throttle_rate=faults.throttle_rate,
        malformed_rate=faults.malformed_rate,
        slow_rate=faults.slow_rate,
        slow_by=faults.slow_by.total_seconds(),
        **_optional(faults, _OPTIONAL_FAULT_SETTINGS),
    )
    return SimulatorOptions(
        speed=settings.speed,
        seed=settings.seed,
        duration=settings.duration.total_seconds(),
        duration_sigma=settings.duration_sigma,
        failure_rate=settings.failure_rate,
        privacy_repeats=settings.privacy_repeats,
        token_lifetime=settings.token_lifetime.total_seconds(),
        accounts={
            account.id: AccountSpec(
                marketplace_id=account.marketplace_id,
                max_parallel=account.max_parallel,
                instances={i.id: i.max_parallel for i in account.instances},
            )
            for account in accounts
        },
        faults=fault_options,
        **_optional(settings, _OPTIONAL_SETTINGS),
    )


def plan_key(instance_id: str, workflow_id: str, window_start: str | None) -> str:
    """The key of ``planned_durations``: instance, workflow and window start."""
    return f"{instance_id}/{workflow_id}/{window_start or ''}"
