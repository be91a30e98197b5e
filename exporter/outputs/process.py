"""The process and runtime figures every Prometheus exporter serves (`process_*`,
`python_gc_*`, `python_info`), taken from prometheus_client's own collectors.

Generic exporter dashboards and alerts read these exact names, labels and units, so
they come from the library that defines them rather than being re-written here. They
live in a registry of their own (never the library's global one, which a test or an
embedding app may fill), rendered in the format the scrape asked for and appended
beside our hand-rendered families.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client import generate_latest as text_format
from prometheus_client.openmetrics.exposition import generate_latest as _openmetrics_format

# the library leaves this one unannotated: its contract, typed here once
openmetrics_format: Callable[[CollectorRegistry], bytes] = _openmetrics_format


class ProcessMetrics:
    """CPU, memory, file descriptors, start time, garbage collector and Python version."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry

    def render(self, openmetrics: bool) -> str:
        """The families as text 0.0.4 or as OpenMetrics without its `# EOF` line (our
        writer ends the whole document)."""
        if openmetrics:
            return openmetrics_format(self.registry).decode().removesuffix("# EOF\n")
        return text_format(self.registry).decode()
