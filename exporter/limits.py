"""Cardinality limits: how many experiments, branches and event names may exist.

A batch that would cross a limit is refused whole (nothing of it applied); the
check runs under the aggregate's lock together with the apply, so concurrent
batches cannot slip past it together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .aggregate import Aggregate, BranchKey, EventKey
from .validation import MAX_NAME_LENGTH, ValidationError


@dataclass(frozen=True, slots=True)
class Limits:
    max_experiments: int = 10_000
    max_branches: int = 100  # per experiment
    max_events: int = 100  # distinct event names per experiment
    max_name_length: int = MAX_NAME_LENGTH


class LimitError(ValidationError):
    """A cardinality limit would be crossed; `reason` names it for the self-metrics."""


def check(
    aggregate: Aggregate,
    limits: Limits,
    branch_keys: Iterable[BranchKey],
    event_keys: Iterable[EventKey],
) -> None:
    """Raise LimitError if adding these series would cross a limit."""
    new_events = {k for k in set(event_keys) if k not in aggregate.events.ids}
    new_branches = {k for k in set(branch_keys) if k not in aggregate.branches.ids}
    new_branches |= {(k[0], k[1]) for k in new_events} - aggregate.branches.ids.keys()
    if not new_branches and not new_events:
        return
    experiments = aggregate.experiments
    new_experiments = {e for e, _ in new_branches if e not in experiments}
    if len(experiments) + len(new_experiments) > limits.max_experiments:
        raise LimitError(
            "limit_experiments",
            f"the limit of {limits.max_experiments} experiments would be exceeded",
        )
    per_experiment: dict[str, int] = {}
    for experiment, _ in new_branches:
        per_experiment[experiment] = per_experiment.get(experiment, 0) + 1
    for experiment, added in per_experiment.items():
        if len(experiments.get(experiment, ())) + added > limits.max_branches:
            raise LimitError(
                "limit_branches",
                f"experiment {experiment!r} would exceed the limit of "
                f"{limits.max_branches} branches",
            )
    names: dict[str, set[str]] = {}
    for experiment, _, event in new_events:
        names.setdefault(experiment, set()).add(event)
    for experiment, added_names in names.items():
        known = aggregate.event_names.get(experiment, {})
        if len(known.keys() | added_names) > limits.max_events:
            raise LimitError(
                "limit_events",
                f"experiment {experiment!r} would exceed the limit of "
                f"{limits.max_events} event names",
            )
