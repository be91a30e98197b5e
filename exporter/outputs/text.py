"""The exposition formats' small pieces: label escaping, values, and the Writer that
joins families (Prometheus text 0.0.4 and OpenMetrics 1.0 differ only in details)."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

from ..core.aggregate import BranchKey, EventKey
from ..core.families import Family
from . import catalog as cat


def escape(value: str) -> str:
    """Escape a label value for the exposition formats."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def branch_label(key: BranchKey) -> str:
    return f'experiment="{escape(key[0])}",branch="{escape(key[1])}"'


def event_label(key: EventKey) -> str:
    return f'experiment="{escape(key[0])}",branch="{escape(key[1])}",event="{escape(key[2])}"'


def format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    return repr(float(value))


class Writer:
    """Accumulates families; knows the two formats' small differences."""

    def __init__(self, openmetrics: bool) -> None:
        self.openmetrics = openmetrics
        self.parts: list[str] = []

    def declare(self, family: cat.Declared) -> None:
        self.header(family.name, family.kind, family.help)

    def header(self, name: str, kind: str, help_text: str) -> None:
        self.parts.append(_header(name, kind, help_text, self.openmetrics))

    def lines(self, name: str, labels: Iterable[str], values: Iterable[str]) -> None:
        """`labels` are pre-rendered `k="v",...` strings (may be empty)."""
        self.parts.append(
            "".join(
                f"{name}{{{label}}} {value}\n" if label else f"{name} {value}\n"
                for label, value in zip(labels, values, strict=True)
            )
        )

    def family(self, family: Family) -> None:
        if not family.samples:
            return
        self.header(family.name, family.kind, family.help)
        self.lines(
            family.name,
            (",".join(f'{k}="{escape(v)}"' for k, v in s.labels) for s in family.samples),
            (format_value(s.value) for s in family.samples),
        )

    def pieces(self) -> list[str]:
        """The response in pieces, as made: a gzip cache reuses the unchanged ones."""
        if self.openmetrics:
            self.parts.append("# EOF\n")
        return self.parts

    def finish(self) -> str:
        return "".join(self.pieces())


@functools.lru_cache(maxsize=1024)
def _header(name: str, kind: str, help_text: str, openmetrics: bool) -> str:
    """The same string object every scrape, so a gzip cache sees the family unchanged."""
    if openmetrics and kind == "counter":
        name = name.removesuffix("_total")
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
