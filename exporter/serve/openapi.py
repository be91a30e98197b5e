"""The OpenAPI 3.1 document the server serves at /openapi.json."""

from __future__ import annotations

from typing import Any

from ..core.experiment_config import CORRECTIONS
from ..core.validation import MAX_ABS_EVENT_VALUE, MAX_LATENCY_MS, MAX_NAME_LENGTH
from ..ingest.part_columns import FIELDS as PART_FIELDS
from ..outputs import catalog
from ..version import __version__

# no C0/C1 controls, line or paragraph separators (the same rule as validation.py)
_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME_LENGTH,
    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]+$",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _NAME}


_ERROR = _json(_ref("Error"), "The request was refused; nothing was applied.")
_NOT_FOUND = _json(_ref("Error"), "No such experiment or branch.")
_BAD_NAME = _json(_ref("Error"), "A name in the path or query is not a valid name.")
_UNAUTHORISED = {"description": "A token is configured and the request did not carry it."}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Send one per write and keep it across retries: a repeat is answered with "
    "the first answer and applied no second time (keys are remembered for 24 hours).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}
_WRITE_ERRORS = {
    "202": _json(
        {"type": "object"},
        "Applied in memory but not yet on disk (no Idempotency-Key was sent): do not resend.",
    ),
    "401": _UNAUTHORISED,
    "408": _json(_ref("Error"), "The body did not arrive in time; nothing was applied."),
    "422": _json(_ref("Error"), "A limit would be crossed, or the Idempotency-Key was reused."),
    "413": _json(_ref("Error"), "The body or the batch is over its limit; nothing was applied."),
    "415": _json(_ref("Error"), "The body must be JSON."),
    "429": _json(_ref("Error"), "The disk writer is behind: retry after Retry-After seconds."),
    "503": _json(
        _ref("Error"),
        "Restoring, short of memory, too busy, or (with an Idempotency-Key) not yet on disk: "
        "retry after Retry-After seconds, with the same key.",
    ),
}


def document() -> dict[str, Any]:
    spec = _paths()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            responses.setdefault("401", _UNAUTHORISED)
            if "{" in path or "parameters" in operation:
                responses.setdefault("400", _BAD_NAME)
            if method in ("post", "put", "delete"):
                operation["parameters"] = [*operation.get("parameters", []), _IDEMPOTENCY_KEY]
                for status, response in _WRITE_ERRORS.items():
                    if status not in ("408", "413", "415") or "requestBody" in operation:
                        responses.setdefault(status, response)
    spec["paths"]["/api/v1/experiments"]["delete"]["responses"]["403"] = _json(
        _ref("Error"), "Clearing everything is disabled on this exporter."
    )
    return spec


def _paths() -> dict[str, Any]:
    experiment = [_path_param("experiment")]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "abtest-exporter",
            "version": __version__,
            "description": "Record A/B-test queries and events; read aggregates and comparisons.",
        },
        "paths": {
            "/api/v1/records": {
                "post": {
                    "summary": "Record queries, events and pre-aggregated parts (atomic)",
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
                    "summary": "Clear every experiment's data and API configs (off by default)",
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
                        "200": _json(_ref("Comparison"), "The comparison."),
                        "400": _ERROR,
                        "404": _NOT_FOUND,
                    },
                }
            },
            "/api/v1/experiments/{experiment}/analysis": {
                "get": {
                    "summary": "Every treatment against the control: all metrics, SRM, percentiles",
                    "parameters": experiment,
                    "responses": {"200": _json(_ref("Analysis"), "Analysis."), "404": _NOT_FOUND},
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
                "delete": {
                    "summary": "Drop the config set through the API (back to the config file's)",
                    "parameters": experiment,
                    "responses": {
                        "200": _json({"type": "object"}, "Dropped."),
                        "404": _json(_ref("Error"), "No config was set through the API."),
                    },
                },
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text 0.0.4, or OpenMetrics 1.0 when asked by Accept",
                    "description": _metrics_description(),
                    "responses": {
                        "200": {
                            "description": "The families below, then the exporter's own "
                            "(abtest_exporter_*) and the process metrics.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/api/v1/buckets": {
                "get": {
                    "summary": "The latency bucket bounds parts must be bucketed by",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "latency_bounds_seconds": {
                                        "type": "array",
                                        "items": {"type": "number"},
                                    }
                                },
                            },
                            "Upper bounds in seconds (le); +Inf is implied and last.",
                        )
                    },
                }
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


def _num(description: str, nullable: bool = False) -> dict[str, Any]:
    return {"type": ["number", "null"] if nullable else "number", "description": description}


def _metric_comparison() -> dict[str, Any]:
    """Which interval goes with which p: `ci_*` and `relative_ci_*` are unadjusted
    confidence sequences at level alpha and go with `p_value`; `significant` and
    `verdict` use `adjusted_p_value`."""
    return {
        "type": "object",
        "description": "One metric of a treatment against the control. Intervals are "
        "unadjusted and go with p_value; significant and verdict use adjusted_p_value, so "
        "an interval may exclude 0 while the verdict stays 0 (inconclusive).",
        "properties": {
            "metric": {"type": "string"},
            "event": {"type": "string"},
            "value_a": _num("Control's value: ratio 0..1, seconds, or events per query."),
            "value_b": _num("Treatment's value, same unit."),
            "difference": _num("value_b - value_a."),
            "relative_difference": _num("difference / value_a (lift).", True),
            "ci_lower": _num("Confidence sequence for difference, unadjusted: with p_value.", True),
            "ci_upper": _num("Upper end of that sequence.", True),
            "relative_ci_lower": _num(
                "Confidence sequence for the lift (delta method), unadjusted: with p_value.", True
            ),
            "relative_ci_upper": _num("Upper end of that sequence.", True),
            "p_value": _num("Always-valid p-value, one comparison."),
            "adjusted_p_value": _num("p_value adjusted across the experiment (Holm or BH)."),
            "significant": {
                "type": "boolean",
                "description": "adjusted_p_value < alpha and both arms at min_sample_size.",
            },
            "verdict": {
                "type": "integer",
                "enum": [-1, 0, 1],
                "description": "+1 better, -1 "
                "worse (metric's direction), 0: not significant or SRM.",
            },
            "probability_better": _num("Chance the treatment is better.", True),
            "mde": _num("Minimum detectable effect now (80% power, sequential).", True),
            "eta_seconds": _num("Time until mde reaches |difference| at the current rate.", True),
        },
    }


def _metrics_description() -> str:
    """The families of /metrics, from the one declaration they are rendered from."""
    lines = [f"- `{f.name}` ({f.kind}): {f.help}" for f in catalog.FAMILIES]
    return "Families about experiments:\n\n" + "\n".join(lines)


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
                "parts": {"type": "array", "items": _ref("Part")},
                "event_parts": {"type": "array", "items": _ref("EventPart")},
            },
        },
        "Part": {
            "type": "object",
            "description": "Pre-aggregated queries of one series, exact sufficient statistics "
            "(what `exporter.client` sends with preaggregate=True). Beyond the field ranges the "
            "fields must agree: successes <= queries, min <= sum/queries <= max, m2 within what "
            "min..max allow, buckets (non-cumulative, the layout of GET /api/v1/buckets, +Inf "
            "last) adding up to queries with the first and last used ones holding min and max.",
            "additionalProperties": False,
            "required": list(PART_FIELDS),
            "properties": {
                "experiment": _NAME,
                "branch": _NAME,
                "queries": {"type": "integer", "minimum": 1, "maximum": 2**53 - 1},
                "successes": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
                "latency_sum_ms": _num("sum of the latencies"),
                "latency_m2_ms2": {
                    "type": "number",
                    "minimum": 0,
                    "description": "sum of squared deviations from the mean (Welford's M2)",
                },
                "latency_min_ms": {"type": "number", "minimum": 0, "maximum": MAX_LATENCY_MS},
                "latency_max_ms": {"type": "number", "minimum": 0, "maximum": MAX_LATENCY_MS},
                "buckets": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            },
        },
        "EventPart": {
            "type": "object",
            "description": "Pre-aggregated values of one event series: count, sum and M2.",
            "additionalProperties": False,
            "required": ["experiment", "branch", "event", "count", "sum", "m2"],
            "properties": {
                "experiment": _NAME,
                "branch": _NAME,
                "event": _NAME,
                "count": {"type": "integer", "minimum": 1, "maximum": 2**53 - 1},
                "sum": _num("sum of the values"),
                "m2": {"type": "number", "minimum": 0, "description": "Welford's M2"},
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
                "control": {"anyOf": [_NAME, {"type": "null"}]},
                "allocation": {
                    "anyOf": [
                        {
                            "type": "object",
                            "minProperties": 1,
                            "propertyNames": _NAME,
                            "additionalProperties": {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "maximum": 1e12,
                            },
                        },
                        {"type": "null"},
                    ]
                },
                "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "min_sample_size": {"type": "integer", "minimum": 1, "maximum": 10**12},
                "sequential_tuning": {"type": "number", "minimum": 1, "maximum": 1e12},
                "correction": {"type": "string", "enum": list(CORRECTIONS)},
                "primary_metric": {
                    "anyOf": [
                        {
                            "type": "string",
                            "pattern": "^(success_ratio|latency_mean|(event_rate|event_mean):"
                            "[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]{1,128})$",
                        },
                        {"type": "null"},
                    ],
                    "description": "The metric whose verdict names the winner (default "
                    "success_ratio).",
                },
            },
        },
        "MetricComparison": _metric_comparison(),
        "Comparison": {
            "type": "object",
            "description": "Branch b against branch a (the seed's fields, then every metric).",
            "properties": {
                "avg_latency_a": _num("Mean latency of a in milliseconds (the seed's unit)."),
                "avg_latency_b": _num("Mean latency of b in milliseconds."),
                "latency_diff": _num("b - a in milliseconds."),
                "avg_latency_a_seconds": _num("Mean latency of a in seconds."),
                "avg_latency_b_seconds": _num("Mean latency of b in seconds."),
                "latency_diff_seconds": _num("b - a in seconds (the unit of `metrics`)."),
                "is_significant": {
                    "type": "boolean",
                    "description": "Any metric significant (adjusted p < alpha).",
                },
                "metrics": {"type": "array", "items": _ref("MetricComparison")},
            },
        },
        "Analysis": {
            "type": "object",
            "properties": {
                "progress": _num("Smallest branch's queries / min_sample_size, at most 1."),
                "winner": {
                    "type": ["string", "null"],
                    "description": "The treatment whose verdict is +1 on primary_metric.",
                },
                "comparisons": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": _ref("MetricComparison")},
                },
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
