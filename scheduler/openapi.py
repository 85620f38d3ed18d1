"""The OpenAPI 3.1 document served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

from . import __version__
from .store.models import RunState

STATES = [state.value for state in RunState]


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_TIME = _nullable("string", format="date-time")

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Window": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string"},
            "start": {"type": "string"},
            "end": {"type": "string"},
            "time_zone": {"type": "string"},
        },
    },
    "Run": {
        "type": "object",
        "required": ["id", "job", "account", "instance", "state", "window"],
        "properties": {
            "id": {"type": "integer"},
            "job": {"type": "string"},
            "account": {"type": "string"},
            "instance": {"type": "string"},
            "state": {"type": "string", "enum": STATES},
            "source": {"type": "string"},
            "priority": {"type": "integer"},
            "window": _ref("Window"),
            "parameters": {"type": "object"},
            "workflow_id": _nullable("string"),
            "ad_hoc": {"type": "boolean"},
            "attempt": {"type": "integer"},
            "max_attempts": {"type": "integer"},
            "execution_id": _nullable("string"),
            "amc_status": _nullable("string"),
            "reason": _nullable("string"),
            "message": _nullable("string"),
            "cancel_requested": {"type": "boolean"},
            "results": _nullable("string"),
            "not_before": _TIME,
            "created_at": _TIME,
            "submitted_at": _TIME,
            "started_at": _TIME,
            "finished_at": _TIME,
            "duration_seconds": _nullable("number"),
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "run_id", "at", "to_state", "reason"],
        "properties": {
            "id": {"type": "integer"},
            "run_id": {"type": "integer"},
            "at": {"type": "string", "format": "date-time"},
            "from_state": _nullable("string"),
            "to_state": {"type": "string"},
            "reason": {"type": "string"},
            "attempt": _nullable("integer"),
            "execution_id": _nullable("string"),
            "message": _nullable("string"),
            "detail": _nullable("object"),
            "worker_id": _nullable("string"),
        },
    },
    "Attempt": {
        "type": "object",
        "required": ["number", "execution_id"],
        "properties": {
            "number": {"type": "integer"},
            "execution_id": {"type": "string"},
            "adopted": {"type": "boolean"},
            "amc_status": _nullable("string"),
            "outcome": _nullable("string"),
            "reason": _nullable("string"),
            "submitted_at": _TIME,
            "started_at": _TIME,
            "finished_at": _TIME,
        },
    },
    "ResultFile": {
        "type": "object",
        "required": ["name", "path", "bytes"],
        "properties": {
            "name": {"type": "string"},
            "path": {"type": "string"},
            "bytes": {"type": "integer"},
            "kind": {"type": "string"},
        },
    },
    "RunDetail": {
        "allOf": [
            _ref("Run"),
            {
                "type": "object",
                "required": ["events", "attempts", "files"],
                "properties": {
                    "events": {"type": "array", "items": _ref("Event")},
                    "attempts": {"type": "array", "items": _ref("Attempt")},
                    "files": {"type": "array", "items": _ref("ResultFile")},
                },
            },
        ]
    },
    "RunPage": {
        "type": "object",
        "required": ["runs", "next_before"],
        "properties": {
            "runs": {"type": "array", "items": _ref("Run")},
            "next_before": _nullable("integer"),
        },
    },
    "Job": {
        "type": "object",
        "required": ["name", "instance", "account"],
        "properties": {
            "name": {"type": "string"},
            "instance": {"type": "string"},
            "account": {"type": "string"},
            "workflow_id": _nullable("string"),
            "ad_hoc": {"type": "boolean"},
            "schedule": _nullable("string"),
            "time_zone": {"type": "string"},
            "time_window": {"type": "object"},
            "parameters": {"type": "object"},
            "priority": {"type": "integer"},
            "max_attempts": {"type": "integer"},
            "next_fire_time": _TIME,
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "database", "queue", "instances"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "version": {"type": "string"},
            "worker_id": {"type": "string"},
            "database": {"type": "object"},
            "dispatcher": {"type": "object"},
            "queue": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
            },
            "instances": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "account", "in_flight", "limit"],
                    "properties": {
                        "id": {"type": "string"},
                        "account": {"type": "string"},
                        "in_flight": {"type": "integer"},
                        "external": {"type": "integer"},
                        "limit": {"type": "integer"},
                    },
                },
            },
            "accounts": {"type": "array", "items": {"type": "object"}},
        },
    },
    "RunRequest": {
        "type": "object",
        "required": ["job"],
        "additionalProperties": False,
        "properties": {
            "job": {"type": "string", "minLength": 1, "maxLength": 200},
            "window": _nullable(
                "object",
                description="A time_window rule as in the config, or"
                " {start, end[, time_zone]} for an explicit window.",
            ),
            "parameters": _nullable("object"),
        },
    },
    "Created": {
        "type": "object",
        "required": ["run", "created"],
        "properties": {"run": _ref("Run"), "created": {"type": "boolean"}},
    },
    "Cancelled": {
        "type": "object",
        "required": ["run"],
        "properties": {"run": _ref("Run")},
    },
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
    }


_ERRORS = {
    "400": _json("Error", "Invalid input."),
    "503": _json("Error", "The database is unavailable."),
}
_WRITE_ERRORS = {
    **_ERRORS,
    "401": _json("Error", "No or a wrong bearer token."),
    "403": _json("Error", "Writes are disabled (no server.api_token)."),
    "404": _json("Error", "No such job or run."),
    "413": _json("Error", "The body is too large."),
}
_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "amc-scheduler",
            "version": __version__,
            "description": "Runs of AMC workflow executions: queue, history, health."
            " Write calls need `Authorization: Bearer <server.api_token>`.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "Service health",
                    "responses": {
                        "200": _json("Health", "The service works."),
                        "503": _json("Health", "Database unreachable or loop stalled."),
                    },
                }
            },
            "/api/jobs": {
                "get": {
                    "summary": "Configured jobs",
                    "responses": {
                        "200": {
                            "description": "The jobs of the config file.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["jobs"],
                                        "properties": {
                                            "jobs": {
                                                "type": "array",
                                                "items": _ref("Job"),
                                            }
                                        },
                                    }
                                }
                            },
                        }
                    },
                }
            },
            "/api/runs": {
                "get": {
                    "summary": "Runs, newest first",
                    "parameters": [
                        {"name": "job", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {"type": "string", "enum": STATES},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                        {
                            "name": "before",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                    ],
                    "responses": {
                        "200": _json("RunPage", "A page of runs."),
                        **_ERRORS,
                    },
                },
                "post": {
                    "summary": "Enqueue a run of a job",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("RunRequest")}},
                    },
                    "responses": {
                        "201": _json("Created", "A new run."),
                        "200": _json(
                            "Created", "The live run with the same dedupe key."
                        ),
                        **_WRITE_ERRORS,
                    },
                },
            },
            "/api/runs/{run_id}": {
                "get": {
                    "summary": "One run with its events, attempts and files",
                    "parameters": [_RUN_ID],
                    "responses": {
                        "200": _json("RunDetail", "The run."),
                        "404": _json("Error", "No such run."),
                        "503": _ERRORS["503"],
                    },
                }
            },
            "/api/runs/{run_id}/cancel": {
                "post": {
                    "summary": "Cancel a run (at AMC when submitted)",
                    "security": [{"bearer": []}],
                    "parameters": [_RUN_ID],
                    "responses": {
                        "200": _json("Cancelled", "Cancelled, or flagged for it."),
                        "409": _json("Error", "The run has already ended."),
                        **_WRITE_ERRORS,
                    },
                }
            },
        },
    }
