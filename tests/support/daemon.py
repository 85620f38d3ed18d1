"""The daemon as a real subprocess, its JSON log read line by line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

Event = dict[str, Any]


def write_config(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def base_config(**overrides: Any) -> dict[str, Any]:
    """A small config on the simulator, HTTP on a free port."""
    document: dict[str, Any] = {
        "amc": {"api_url": "simulator", "simulator": {"speed": 600, "seed": 1}},
        "accounts": [
            {
                "id": "ENTITYTEST1",
                "marketplace_id": "ATVPDKIKX0DER",
                "max_parallel": 15,
                "instances": [
                    {"id": "amctest1", "max_parallel": 10},
                    {"id": "amctest2", "max_parallel": 10},
                ],
            }
        ],
        "jobs": [],
        "server": {"port": 0, "api_token": "test-token-123"},
        "logging": {"level": "debug", "format": "json"},
    }
    document.update(overrides)
    return document


class Daemon:
    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        command: tuple[str, ...] = ("run",),
    ) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.args = args
        self.command = command
        self.events: list[Event] = []
        self.raw: list[str] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> Daemon:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scheduler",
                *self.args,
                *self.command,
                "--config",
                str(self.config),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.raw.append(line)
                try:
                    parsed = json.loads(line)
                except ValueError:
                    parsed = {"event": "unparsed_output", "text": line.rstrip()}

                self.events.append(parsed)
                self._changed.notify_all()

        with self._changed:
            self._changed.notify_all()

    def find(self, event: str, **fields: Any) -> list[Event]:
        with self._changed:
            return [
                e
                for e in self.events
                if e.get("event") == event
                and all(e.get(k) == v for k, v in fields.items())
            ]

    def wait_for(
        self, event: str, timeout: float = 30.0, count: int = 1, **fields: Any
    ) -> Event:
        """Block until ``event`` (with ``fields``) has appeared ``count`` times."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [
                    e
                    for e in self.events
                    if e.get("event") == event
                    and all(e.get(k) == v for k, v in fields.items())
                ]
                if len(found) >= count:
                    return found[count - 1]

                remaining = deadline - time.monotonic()
                exited = self.process is not None and self.process.poll() is not None
                if remaining <= 0 or (exited and not self._reader_alive()):
                    tail = "".join(self.raw[-30:])
                    raise AssertionError(
                        f"no {event} {fields} within {timeout}s; last output:\n{tail}"
                    )

                self._changed.wait(min(remaining, 0.5))

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    @property
    def port(self) -> int:
        return int(self.wait_for("http_server_started")["port"])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        return request("GET", self.url(path), headers=headers)

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = self.get(path)
        return status, json.loads(body)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)

        code = self.process.wait(timeout)
        self._close()
        return code

    def _close(self) -> None:
        assert self.process is not None
        if self._reader is not None:
            self._reader.join(10)

        if self.process.stdout is not None:
            self.process.stdout.close()

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return

        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

        self._close()


def request(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")

    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def poll_until(
    check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1
) -> Any:
    """Call ``check`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last

        time.sleep(interval)

    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def signal_name(code: int) -> str:
    return signal.Signals(-code).name if code < 0 else str(code)
