"""The root of every error the scheduler raises on purpose."""

from __future__ import annotations


class SchedulerError(Exception):
    """Something the scheduler refuses to do or cannot do."""


class ConfigError(SchedulerError):
    """The config file is invalid; each problem is one line naming file and key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StoreError(SchedulerError):
    """The database could not do what was asked."""


class DatabaseUnavailable(StoreError):
    """The database cannot be reached."""


class NotFound(SchedulerError, LookupError):
    """No such job or run."""


class InvalidInput(SchedulerError, ValueError):
    """A request (CLI, API) is malformed or asks for something impossible."""
