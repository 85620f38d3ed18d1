"""AMC's answers, sorted by what the dispatcher has to do about them.

One class per decision: wait for a slot (``LimitReached``), slow down
(``Throttled``), try again, looking first if a create may have landed
(``TransientError``), stop (``PrivacyRejected``, ``InvalidRequest``,
``AuthenticationFailed``), or treat as gone (``AmcNotFound``).
``ResultsNotReady`` means the download URLs do not exist yet.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import SchedulerError

_LIMIT_WORDS = re.compile(
    r"(too many|maximum|max|limit|exceed\w*)\W+(?:\w+\W+){0,6}?"
    r"(concurrent|parallel|running|simultaneous|active)"
    r"|(concurrent|parallel|running|simultaneous)\W+(?:\w+\W+){0,4}?"
    r"(executions?|workflows?|queries|limit)",
    re.IGNORECASE,
)
_QUOTA_WORDS = re.compile(r"quota|per day|daily limit|a day", re.IGNORECASE)
_PRIVACY_WORDS = re.compile(
    r"too many workflows have already been run against the same input data",
    re.IGNORECASE,
)
_NOT_READY_WORDS = re.compile(r"unavailable for download", re.IGNORECASE)
_EXPIRED_TOKEN_WORDS = re.compile(r"expired|invalid.{0,20}token", re.IGNORECASE)
_VALIDATION_WORDS = re.compile(
    r"syntax|sql|column|table|invalid|validation|not found|does not exist"
    r"|unsupported|parameter",
    re.IGNORECASE,
)


class AmcError(SchedulerError):
    """An AMC call failed. Carries what AMC said, never a credential."""

    def __init__(
        self,
        message: str,
        *,
        call: str = "",
        status: int | None = None,
        code: str | None = None,
        details: str | None = None,
    ) -> None:
        super().__init__(message)
        self.call = call
        self.status = status
        self.code = code
        self.details = details


class LimitReached(AmcError):
    """A parallel limit (or a daily quota) is full: wait and submit again."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        quota: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.quota = quota


class Throttled(AmcError):
    """The request rate is too high: back off, honouring Retry-After."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TransientError(AmcError):
    """A 5xx, timeout, reset or unreadable answer.

    ``ambiguous`` is set when a create may have reached AMC: look the execution
    up before submitting again.
    """

    def __init__(self, message: str, *, ambiguous: bool = False, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.ambiguous = ambiguous


class AuthenticationFailed(AmcError):
    """Credentials refused (401 after a refresh, or 403)."""


class PrivacyRejected(AmcError):
    """AMC's privacy rule: the same window has been queried too often."""


class InvalidRequest(AmcError):
    """Any other 4xx: the request itself is wrong (validation, SQL)."""


class AmcNotFound(AmcError):
    """404: no such execution (or instance)."""


class ResultsNotReady(AmcError):
    """The execution's result files are not available for download yet."""


def is_privacy_message(text: str | None) -> bool:
    return bool(text and _PRIVACY_WORDS.search(text))


def is_limit_message(text: str | None) -> bool:
    return bool(text and (_LIMIT_WORDS.search(text) or _QUOTA_WORDS.search(text)))


def is_expired_token_message(text: str | None) -> bool:
    return bool(text and _EXPIRED_TOKEN_WORDS.search(text))


def is_validation_message(text: str | None) -> bool:
    return bool(text and _VALIDATION_WORDS.search(text))


def parse_error_body(body: str) -> tuple[str | None, str]:
    """AMC's ``code`` and the human text, from JSON or whatever came back."""
    try:
        document = json.loads(body)
    except ValueError:
        text = re.sub(r"<[^>]+>", " ", body)
        return None, " ".join(text.split())[:500]

    if not isinstance(document, dict):
        return None, str(document)[:500]

    code = document.get("code") or document.get("error")
    for key in ("details", "message", "error_description", "statusReason"):
        if isinstance(document.get(key), str) and document[key]:
            return (str(code) if code is not None else None), document[key]

    return (str(code) if code is not None else None), body[:500]


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare here and ignored)."""
    if not value:
        return None

    try:
        seconds = float(value)
    except ValueError:
        return None

    return max(0.0, seconds)


def classify(
    status: int,
    body: str,
    *,
    call: str,
    retry_after: str | None = None,
    is_create: bool = False,
) -> AmcError:
    """The error class for an HTTP answer that was not a success."""
    code, text = parse_error_body(body)
    delay = parse_retry_after(retry_after)
    message = f"{call}: HTTP {status}" + (f": {text}" if text else "")
    kw: dict[str, Any] = {"call": call, "status": status, "code": code, "details": text}
    if is_privacy_message(text):
        return PrivacyRejected(message, **kw)

    if status == 429 or (400 <= status < 500 and is_limit_message(text)):
        if is_limit_message(text):
            quota = bool(_QUOTA_WORDS.search(text)) and not _LIMIT_WORDS.search(text)
            return LimitReached(message, retry_after=delay, quota=quota, **kw)

        if status == 429:
            return Throttled(message, retry_after=delay, **kw)

    if status in (401, 403):
        return AuthenticationFailed(message, **kw)

    if status == 404:
        return AmcNotFound(message, **kw)

    if status == 400 and _NOT_READY_WORDS.search(text):
        return ResultsNotReady(message, **kw)

    if 400 <= status < 500:
        return InvalidRequest(message, **kw)

    return TransientError(message, ambiguous=is_create, **kw)


def failure_is_retryable(reason: str | None) -> bool:
    """Whether a FAILED execution's reason is worth a new attempt.

    Privacy rejections and validation faults fail again the same way; anything
    else (internal errors, unknown reasons) gets another attempt.
    """
    if is_privacy_message(reason):
        return False

    return not is_validation_message(reason)
