"""The OpenAPI 3.0 document the server serves at /openapi.json."""

from __future__ import annotations

from typing import Any

from .config import CORRECTIONS
from .validation import MAX_ABS_EVENT_VALUE, MAX_LATENCY_MS, MAX_NAME_LENGTH
from .version import __version__

_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _NAME}


_ERROR = _json(_ref("Error"), "The request was refused; nothing was applied.")
_NOT_FOUND = _json(_ref("Error"), "No such experiment or branch.")


def document() -> dict[str, Any]:
    experiment = [_path_param("experiment")]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "abtest-exporter",
            "version": __version__,
            "description": "Record A/B-test queries and events; read aggregates and comparisons.",
        },
        "paths": {
            "/api/v1/records": {
                "post": {
                    "summary": "Record a batch of queries and events (atomic)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("Batch")}},
                    },
                    "responses": {
                        "200": _json(_ref("Accepted"), "Every record was applied."),
                        "400": _ERROR,
                        "413": _ERROR,
                        "415": _ERROR,
                    },
                }
            },
            "/api/v1/experiments": {
                "get": {
                    "summary": "Summaries of all experiments",
                    "responses": {"200": _json(_ref("SummaryList"), "All summaries.")},
                },
                "delete": {
                    "summary": "Clear every experiment's data",
                    "responses": {"200": _json({"type": "object"}, "Cleared.")},
                },
            },
            "/api/v1/experiments/{experiment}": {
                "get": {
                    "summary": "Per-branch metrics of one experiment",
                    "parameters": experiment,
                    "responses": {"200": _json(_ref("Experiment"), "Metrics."), "404": _NOT_FOUND},
                },
                "delete": {
                    "summary": "Clear one experiment's data (its config stays)",
                    "parameters": experiment,
                    "responses": {"200": _json({"type": "object"}, "Cleared."), "404": _NOT_FOUND},
                },
            },
            "/api/v1/experiments/{experiment}/branches/{branch}": {
                "get": {
                    "summary": "Metrics of one branch",
                    "parameters": [*experiment, _path_param("branch")],
                    "responses": {"200": _json(_ref("Branch"), "Metrics."), "404": _NOT_FOUND},
                }
            },
            "/api/v1/experiments/{experiment}/summary": {
                "get": {
                    "summary": "Summary of one experiment, with its best branch",
                    "parameters": experiment,
                    "responses": {"200": _json(_ref("Summary"), "Summary."), "404": _NOT_FOUND},
                }
            },
            "/api/v1/experiments/{experiment}/compare": {
                "get": {
                    "summary": "Compare branch b with branch a (default: the control)",
                    "parameters": [
                        *experiment,
                        {"name": "a", "in": "query", "required": False, "schema": _NAME},
                        {"name": "b", "in": "query", "required": True, "schema": _NAME},
                    ],
                    "responses": {
                        "200": _json({"type": "object"}, "The comparison."),
                        "400": _ERROR,
                        "404": _NOT_FOUND,
                    },
                }
            },
            "/api/v1/experiments/{experiment}/analysis": {
                "get": {
                    "summary": "Every treatment against the control: all metrics, SRM, percentiles",
                    "parameters": experiment,
                    "responses": {"200": _json({"type": "object"}, "Analysis."), "404": _NOT_FOUND},
                }
            },
            "/api/v1/experiments/{experiment}/config": {
                "get": {
                    "summary": "How the experiment is analysed",
                    "parameters": experiment,
                    "responses": {"200": _json(_ref("Config"), "The config in force.")},
                },
                "put": {
                    "summary": "Set how the experiment is analysed (replaces the config)",
                    "parameters": experiment,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("Config")}},
                    },
                    "responses": {"200": _json(_ref("Config"), "Stored."), "400": _ERROR},
                },
            },
            "/api/v1/stats": {
                "get": {
                    "summary": "Counts of experiments, branches, queries and events",
                    "responses": {"200": _json({"type": "object"}, "Stats.")},
                }
            },
        },
        "components": {"schemas": _schemas()},
    }


def _schemas() -> dict[str, Any]:
    return {
        "Query": {
            "type": "object",
            "additionalProperties": False,
            "required": ["experiment", "branch", "latency_ms", "success"],
            "properties": {
                "experiment": _NAME,
                "branch": _NAME,
                "latency_ms": {"type": "number", "minimum": 0, "maximum": MAX_LATENCY_MS},
                "success": {"type": "boolean"},
            },
        },
        "Event": {
            "type": "object",
            "additionalProperties": False,
            "required": ["experiment", "branch", "event", "value"],
            "properties": {
                "experiment": _NAME,
                "branch": _NAME,
                "event": _NAME,
                "value": {
                    "type": "number",
                    "minimum": -MAX_ABS_EVENT_VALUE,
                    "maximum": MAX_ABS_EVENT_VALUE,
                },
            },
        },
        "Batch": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "queries": {"type": "array", "items": _ref("Query")},
                "events": {"type": "array", "items": _ref("Event")},
            },
        },
        "Accepted": {
            "type": "object",
            "properties": {"accepted": {"type": "object"}},
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        },
        "Config": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "control": {**_NAME, "nullable": True},
                "allocation": {
                    "type": "object",
                    "nullable": True,
                    "additionalProperties": {
                        "type": "number",
                        "exclusiveMinimum": True,
                        "minimum": 0,
                    },
                },
                "alpha": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
                "min_sample_size": {"type": "integer", "minimum": 1},
                "sequential_tuning": {"type": "number", "minimum": 1},
                "correction": {"type": "string", "enum": list(CORRECTIONS)},
            },
        },
        "Branch": {"type": "object"},
        "Experiment": {"type": "object"},
        "Summary": {"type": "object"},
        "SummaryList": {
            "type": "object",
            "properties": {"experiments": {"type": "array", "items": _ref("Summary")}},
        },
    }
