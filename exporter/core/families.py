"""A metric family as data: name, type, help and samples, for any writer to render.

Kept apart from the writers so that the parts that describe their own figures (the
store, the self-metrics, the comparison engine) depend on this description only,
not on the exposition code that renders it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of a family: label pairs (already in order) and a finite value."""

    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str  # counter | gauge | histogram | summary
    help: str
    samples: Sequence[Sample]
