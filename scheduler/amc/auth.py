"""Login with Amazon: access tokens from a refresh token, cached and shared.

An access token lives an hour; it is refreshed 60 s before it expires, by
one request however many callers are waiting for it. After a 401 the client
asks for a refresh once (``refresh(stale=...)``) and repeats the call. No
token or secret appears in a log line or an exception.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from ..logs import get_logger, redactor
from .errors import AuthenticationFailed, TransientError, parse_error_body

log = get_logger(__name__)
REFRESH_MARGIN = 60.0


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str
    refresh_token: str

    def __repr__(self) -> str:
        return f"Credentials(client_id={self.client_id!r}, client_secret=***, ...)"


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float


class TokenProvider:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        token_url: str,
        credentials: Credentials,
        *,
        margin: float = REFRESH_MARGIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._token_url = token_url
        self._credentials = credentials
        self._margin = margin
        self._clock = clock
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.refreshes = 0
        redactor.add([credentials.client_secret, credentials.refresh_token])

    @property
    def client_id(self) -> str:
        return self._credentials.client_id

    def _fresh(self) -> _Token | None:
        token = self._token
        if token is not None and self._clock() < token.expires_at - self._margin:
            return token

        return None

    async def token(self) -> str:
        """A valid access token, refreshed first when it is about to expire."""
        token = self._fresh()
        if token is not None:
            return token.value

        return await self.refresh()

    async def refresh(self, stale: str | None = None) -> str:
        """Fetch a new token unless someone already replaced ``stale``."""
        async with self._lock:
            token = self._fresh()
            if token is not None and token.value != stale:
                return token.value

            token = await self._request()
            self._token = token
            return token.value

    async def _request(self) -> _Token:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._credentials.refresh_token,
            "client_id": self._credentials.client_id,
            "client_secret": self._credentials.client_secret,
        }
        try:
            async with self._session.post(self._token_url, data=form) as response:
                body = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(
                f"token refresh failed: {type(exc).__name__}", call="token"
            ) from None

        if status >= 500 or status == 429:
            raise TransientError(f"token refresh failed: HTTP {status}", call="token")

        if status != 200:
            code, text = parse_error_body(body)
            raise AuthenticationFailed(
                f"token refresh refused: HTTP {status} {code or ''}: {text}".strip(),
                call="token",
                status=status,
                code=code,
            )

        try:
            document = _parse_token(body)
        except ValueError:
            raise TransientError(
                "token refresh answer unreadable", call="token"
            ) from None

        value, lifetime, rotated = document
        redactor.add([value])
        if rotated and rotated != self._credentials.refresh_token:
            redactor.add([rotated])
            self._credentials = Credentials(
                self._credentials.client_id, self._credentials.client_secret, rotated
            )

        self.refreshes += 1
        log.info("access_token_refreshed", expires_in=lifetime)
        return _Token(value, self._clock() + lifetime)


def _parse_token(body: str) -> tuple[str, float, str | None]:
    document = json.loads(body)
    if not isinstance(document, dict) or not isinstance(
        document.get("access_token"), str
    ):
        raise ValueError("no access_token")

    lifetime = float(document.get("expires_in", 3600))
    rotated = document.get("refresh_token")
    if not isinstance(rotated, str):
        rotated = None

    return document["access_token"], lifetime, rotated
