"""`ABMetrics`: the thread-safe manager apps call in process.

Recording only checks and appends to a pending list (list.extend is atomic),
so the hot path takes no lock; pending records are folded into the aggregate
in batches, and every read folds first, so a read sees every record whose
call returned before it. A series' names are checked once, when it is created:
after that, finding its key among those checked is the whole check.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core import limits
from ..core.aggregate import (
    DEFAULT_BUCKETS,
    Aggregate,
    BranchKey,
    BranchParts,
    Changes,
    EventKey,
    EventParts,
    PartColumns,
    Records,
    View,
)
from ..core.experiment_config import ExperimentConfig
from ..core.idempotency import Answer, KeyChanges, Keys, Once
from ..core.limits import LimitError, Limits
from ..core.results import (
    BranchMetrics,
    ExperimentMetrics,
    ExperimentSummary,
    MetricsStats,
    activity,
    build_branch,
    build_experiment,
    events_by_branch,
    summarise,
)
from ..core.tables import Table
from ..core.validation import (
    MAX_ABS_EVENT_VALUE,
    MAX_COUNT,
    MAX_LATENCY_MS,
    ValidationError,
    check_name,
    event_value_problem,
    latency_problem,
    success_problem,
)
from ..ingest.otlp import Parsed, Received, Receiver, StreamChanges, StreamFigures, StreamKey
from ..stats.analysis import Analyses, analyse
from ..stats.pairwise import BranchComparison, compare
from . import pending

Clock = Callable[[], float]
_STORED_BRANCH_COLUMNS = ("n", "ok", "total", "lo", "hi", "m2", "sq", "first", "last")
_FOLD_AT = 16384 * 4  # flat list entries (~1 MB): 16384 queries, 21845 events
_MIN_EVENT_VALUE = -MAX_ABS_EVENT_VALUE
_PEND_AT_MOST = 16  # records of a batch that may join the pending lists (record_batch)
# below this a series cannot pass MAX_COUNT with all that may be pending for it
_NEAR_MAX_COUNT = MAX_COUNT - _FOLD_AT - _PEND_AT_MOST


@dataclass(frozen=True, slots=True)
class StoreBatch:
    """What the store must write to catch up with version `version`."""

    version: int
    changes: Changes
    # (experiment, branch, n, ok, total_ms, lo, hi, m2, first, last, buckets as an array)
    branches: list[tuple[Any, ...]]
    # (experiment, branch, event, count, total, m2)
    events: list[tuple[Any, ...]]
    configs: dict[str, ExperimentConfig | None]
    activity: list[tuple[str, float]]  # (experiment, unix time of its latest write)
    streams: StreamChanges
    keys: KeyChanges

    def __bool__(self) -> bool:
        return bool(
            self.branches
            or self.events
            or self.changes
            or self.configs
            or self.activity
            or self.streams
            or self.keys
        )


@dataclass(frozen=True, slots=True)
class Written:
    """A write's outcome: the version to wait for, and the first answer when it was a
    repeat of an idempotency key (then nothing was applied)."""

    version: int
    repeat: Answer | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent state: the aggregate's copy and the configs at that moment."""

    view: View
    configs: Mapping[str, ExperimentConfig]
    taken_at: float
    version: int
    stats: MetricsStats


class ABMetrics:
    """Per-experiment, per-branch A/B metrics (the seed module's manager API)."""

    def __init__(
        self,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        *,
        clock: Clock = time.time,
        configs: Mapping[str, ExperimentConfig] | None = None,
        limits: Limits | None = None,
        receiver: Receiver | None = None,
    ) -> None:
        self._aggregate = Aggregate(buckets)
        self.limits = limits or Limits()
        self._clock = clock
        # OTLP stream state and idempotency keys change in the same step as the records
        # they account for, so they share this lock and reach the disk in the same commit
        self.receiver = receiver or Receiver(self._aggregate.bounds)
        self._keys = Keys(clock=clock)
        self._lock = threading.Lock()
        # Pending records, flat: [code, latency, success, time, code, ...] and
        # [code, value, time, ...], all numbers, packed into columns when folded
        # (state/pending.py). A code is its series' row and serial (Table.code): a record racing a
        # clear of its series finds no row and is dropped rather than landing in a
        # reused one (or re-creating the series past the limits).
        self._queries: list[Any] = []
        self._events: list[Any] = []
        # The series checked here, by name one level at a time (experiment, branch,
        # event) -> its code, the one number pending records share. Nested dicts take a
        # third of a tuple key's time: no tuple to build, and each name's hash is cached.
        self._branch_codes: dict[str, dict[str, float]] = {}
        self._event_codes: dict[str, dict[str, dict[str, float]]] = {}
        self._file_configs: dict[str, ExperimentConfig] = dict(configs or {})
        self._configs: dict[str, ExperimentConfig] = dict(self._file_configs)
        self._changed_configs: set[str] = set()  # set since the store last looked

    @property
    def buckets(self) -> tuple[float, ...]:
        return self._aggregate.bounds

    # -- recording (hot path) ----------------------------------------------

    # Recording is the hot path: plain methods with a handful of attribute look-ups,
    # no lock, one atomic list.extend per record (benchmarks/bench_core.py watches it).

    def record_query(self, experiment: str, branch: str, latency_ms: float, success: bool) -> None:
        """Record one query: its latency in milliseconds and whether it succeeded.
        Raises ValidationError for a latency that is not a finite number in range, a
        success that is not a bool, or a name that is not usable."""
        if (
            (latency_ms.__class__ is not float and latency_ms.__class__ is not int)
            or not 0.0 <= latency_ms <= MAX_LATENCY_MS  # False for NaN too
            or success.__class__ is not bool
        ):
            latency_ms = _checked_query(latency_ms, success)
        try:  # a series seen before had its names checked: finding its code is enough
            code = self._branch_codes[experiment][branch]
        except (KeyError, TypeError):  # a new series (or an unhashable name)
            code = self._admit_branch((experiment, branch))
        queries = self._queries
        queries.extend((code, latency_ms, success, self._clock()))  # one atomic extend
        if len(queries) >= _FOLD_AT:
            self._fold()

    def record_event(self, experiment: str, branch: str, event: str, value: float) -> None:
        """Record one custom event (a conversion of 1, revenue of 42.0, ...).
        Raises ValidationError for a value that is not a finite number within range,
        or a name that is not usable."""
        if (value.__class__ is not float and value.__class__ is not int) or not (
            _MIN_EVENT_VALUE <= value <= MAX_ABS_EVENT_VALUE  # False for NaN too
        ):
            value = _checked_value(value)
        try:
            code = self._event_codes[experiment][branch][event]
        except (KeyError, TypeError):
            code = self._admit_event((experiment, branch, event))
        events = self._events
        events.extend((code, value, self._clock()))
        if len(events) >= _FOLD_AT:
            self._fold()

    def record_batch(
        self,
        records: Records,
        once: Once | None = None,
        answer: Answer | None = None,
        parts: tuple[BranchParts | PartColumns, EventParts] | None = None,
    ) -> Written:
        """Apply already-validated records (and a client's pre-aggregated `parts`)
        together: a read sees all of them or none. With `once`, a repeat of its key
        applies nothing and returns the first answer. Raises LimitError, applying
        nothing, if new series would cross a limit."""
        with self._lock:
            if (entry := self._repeat(once)) is not None:
                return entry
            query_keys, event_keys = records.query_keys, records.event_keys
            if parts is None and self._pend_few(records):
                return self._written(once, answer)
            self._fold_locked()
            aggregate = self._aggregate
            if parts is not None:
                query_keys = query_keys + parts[0].keys
                event_keys = event_keys + parts[1].keys
            # the rows of series that exist, looked up once: when every record and part
            # has one, no series is new and the limits have nothing to check
            rows: tuple[list[int], list[int]] | None = (
                list(map(aggregate.branches.ids.get, query_keys)),  # type: ignore[arg-type]
                list(map(aggregate.events.ids.get, event_keys)),  # type: ignore[arg-type]
            )
            if None in rows[0] or None in rows[1]:  # type: ignore[index]
                rows = None
                limits.check(aggregate, self.limits, query_keys, event_keys)
            branch_counts = [1] * len(records.query_keys)
            event_counts = [1] * len(records.event_keys)
            if parts is not None:
                n = parts[0].n
                branch_counts += n if isinstance(n, list) else n.tolist()
                event_counts += parts[1].count
            limits.check_counts(
                aggregate, query_keys, branch_counts, event_keys, event_counts, rows
            )
            now = self._clock()
            if parts is None:
                aggregate.add(records, now, rows)
                return self._written(once, answer)
            # the records' rows come first, then the parts': each fold takes its own
            queries, events = len(records.query_keys), len(records.event_keys)
            aggregate.add(records, now, rows and (rows[0][:queries], rows[1][:events]))
            aggregate.add_parts(
                parts[0], parts[1], now, rows and (rows[0][queries:], rows[1][events:])
            )
            return self._written(once, answer)

    def _pend_few(self, records: Records) -> bool:
        """A few records of series that exist join the pending lists the in-process
        recorders fill (under the lock: a read still sees all of them or none), so a
        single-record POST pays no fold of its own: the next read or store commit folds
        the pending records of many requests at once. False, taking nothing, for an empty
        or larger batch or a new series (checked against the limits on the direct path)."""
        query_keys, event_keys = records.query_keys, records.event_keys
        if not 0 < len(query_keys) + len(event_keys) <= _PEND_AT_MOST:
            return False
        aggregate = self._aggregate
        # series that exist and are far from MAX_COUNT (whatever is pending for them):
        # anything else goes the direct way, which folds and checks counts exactly
        held: list[tuple[Table[Any], str, Sequence[Any]]] = [
            (aggregate.branches, "n", query_keys),
            (aggregate.events, "count", event_keys),
        ]
        codes: list[list[float]] = []
        for table, count, keys in held:
            ids, counts, found = table.ids, table.columns[count], []
            for key in keys:
                row = ids.get(key)
                if row is None or counts[row] > _NEAR_MAX_COUNT:
                    return False
                found.append(table.code(row))
            codes.append(found)
        now = self._clock()
        queries, events = self._queries, self._events
        for entry in zip(codes[0], records.latency_ms, records.success, records.when, strict=True):
            queries.extend(entry)
        for code, value in zip(codes[1], records.event_values, strict=True):
            events.extend((code, value, now))
        aggregate.touch({key[0] for key in query_keys} | {key[0] for key in event_keys}, now)
        # a version above every commit taken before: the one that folds these passes it
        aggregate.bump()
        if len(queries) >= _FOLD_AT or len(events) >= _FOLD_AT:
            self._fold_locked()
        return True

    def record_parts(
        self, branches: BranchParts, events: EventParts, check_limits: bool = True
    ) -> tuple[int, Counter[str]]:
        """Apply pre-aggregated increments (restore, benchmarks) together, like
        record_batch, leaving out the parts whose new series would cross a limit. Returns
        the version and the refused record counts by reason."""
        refused: Counter[str] = Counter()
        with self._lock:
            self._fold_locked()
            if check_limits:
                kept_b, kept_e, rows = self._admit_parts(branches, events, refused)
                branches, events = branches.select(kept_b), events.select(kept_e)
            else:
                rows = None
            self._aggregate.add_parts(branches, events, self._clock(), rows)
            return self._aggregate.version, refused

    def record_otlp(
        self,
        parsed: Parsed,
        once: Once | None = None,
        respond: Callable[[Received], Answer] | None = None,
    ) -> tuple[Written, Received | None]:
        """Apply checked OTLP points: increments against each stream's last point, the
        parts within the limits applied, and only their streams moved on, in one step
        under the lock (so the store never sees a stream advanced without its counts)."""
        with self._lock:
            self._fold_locked()
            if (entry := self._repeat(once)) is not None:
                return entry, None
            received = self.receiver.increments(parsed)
            branches, events = received.branches, received.events
            over: Counter[str] = Counter()
            kept_b, kept_e, rows = self._admit_parts(branches, events, over)
            received.refused.records.update(over)
            for reason in over:
                received.refused.messages.append(f"{reason.replace('_', ' ')}: points refused")
            refused_streams = {
                stream
                for kept, streams in ((kept_b, received.branch_streams),
                                      (kept_e, received.event_streams))
                for stream in _left_out(streams, kept)
            }  # fmt: skip
            if refused_streams:  # every part of a refused stream goes, with its state
                rows = None  # (never found: nothing is left out when all parts are held)
                also = [i for i in kept_b if received.branch_streams[i] in refused_streams]
                also_e = [i for i in kept_e if received.event_streams[i] in refused_streams]
                kept_b = [i for i in kept_b if received.branch_streams[i] not in refused_streams]
                kept_e = [i for i in kept_e if received.event_streams[i] not in refused_streams]
                extra = int(sum(branches.n[i] for i in also)) + sum(events.count[i] for i in also_e)
                if extra:
                    received.refused.records["limit_stream"] += extra
                refused_points = len(branches.keys) + len(events.keys) - len(kept_b) - len(kept_e)
                received.refused.points += refused_points
            received.branches, received.events = branches.select(kept_b), events.select(kept_e)
            self._aggregate.add_parts(received.branches, received.events, self._clock(), rows)
            self.receiver.commit(received, refused_streams)
            self._aggregate.bump()  # stream states changed even if no count did
            return self._written(once, respond(received) if respond else None), received

    def _repeat(self, once: Once | None) -> Written | None:
        """The first write's answer if `once`'s key was seen (KeyReused if it differs)."""
        if once is None:
            return None
        entry = self._keys.find(once)
        return Written(entry.version, entry.answer) if entry is not None else None

    def _written(self, once: Once | None, answer: Answer | None) -> Written:
        version = self._aggregate.version
        if once is not None and answer is not None:
            self._keys.remember(once, answer, version)
        return Written(version)

    def _admit_parts(
        self, branches: BranchParts | PartColumns, events: EventParts, refused: Counter[str]
    ) -> tuple[list[int], list[int], tuple[list[int], list[int]] | None]:
        """Indices of the parts whose series exist or fit the limits, and whose counts stay
        below MAX_COUNT; the rest counted in records by reason. When every part is let in
        because its series is held, also the parts' rows (branches, events): `add_parts`
        need not look them up again."""
        aggregate = self._aggregate
        counts = branches.n if isinstance(branches.n, list) else branches.n.tolist()  # ints
        rows = limits.held_rows(aggregate, branches.keys, counts)
        if rows is not None:
            event_rows = limits.held_rows(aggregate, events.keys, events.count)
            if event_rows is not None:
                every = list(range(len(branches.keys))), list(range(len(events.keys)))
                return *every, (rows, event_rows)
        admission = limits.Admission(aggregate, self.limits)
        held = aggregate.held

        def admitted(
            keys: Sequence[Any],
            counts: Sequence[int],
            admit: Callable[[Any], LimitError | None],
        ) -> list[int]:
            kept, pending = [], Counter[Any]()
            for index, (key, count) in enumerate(zip(keys, counts, strict=True)):
                if held(key) + pending[key] + count > MAX_COUNT:
                    refused["limit_count"] += count
                elif (error := admit(key)) is not None:
                    refused[error.reason] += count
                else:
                    pending[key] += count
                    kept.append(index)
            return kept

        return (
            admitted(branches.keys, counts, admission.branch),
            admitted(events.keys, events.count, admission.event),
            None,
        )

    def now(self) -> float:
        return self._clock()

    def stream_figures(self) -> StreamFigures:
        with self._lock:
            streams = self.receiver.streams
            return StreamFigures(len(streams), streams.evicted, streams.recalled)

    def cold_streams(self, lookup: Callable[[str], str | None] | None) -> None:
        """Where stream states that left memory are read back from (the data file)."""
        with self._lock:
            self.receiver.streams.cold = lookup

    def streams_written(self) -> None:
        with self._lock:
            self.receiver.streams.written()

    def forget_streams(self, gone: Sequence[tuple[StreamKey, int]]) -> None:
        with self._lock:
            self.receiver.streams.forget(gone)

    def _admit_branch(self, key: BranchKey) -> float:
        """Check a new series' names and create its row (within the limits); returns
        its code. Names are interned: the series of an experiment share them."""
        length = self.limits.max_name_length
        key = (
            _interned(check_name("experiment", key[0], length)),
            _interned(check_name("branch", key[1], length)),
        )
        with self._lock:
            row = self._aggregate.branches.ids.get(key)
            if row is None:
                limits.check(self._aggregate, self.limits, [key], ())
                row = self._aggregate.branch_row(key)
            code = self._aggregate.branches.code(row)
            self._branch_codes.setdefault(key[0], {})[key[1]] = code
            return code

    def _admit_event(self, key: EventKey) -> float:
        length = self.limits.max_name_length
        key = (
            _interned(check_name("experiment", key[0], length)),
            _interned(check_name("branch", key[1], length)),
            _interned(check_name("event", key[2], length)),
        )
        with self._lock:
            row = self._aggregate.events.ids.get(key)
            if row is None:
                limits.check(self._aggregate, self.limits, (), [key])
                row = self._aggregate.event_row(key)
            code = self._aggregate.events.code(row)
            self._event_codes.setdefault(key[0], {}).setdefault(key[1], {})[key[2]] = code
            return code

    def _forget_keys(self, experiment: str | None) -> None:
        """A clear (of one experiment, or of all when None): its series must be checked
        against the limits again before they take records."""
        if experiment is None:
            self._branch_codes.clear()
            self._event_codes.clear()
            return
        self._branch_codes.pop(experiment, None)
        self._event_codes.pop(experiment, None)

    def _fold(self) -> None:
        with self._lock:
            self._fold_locked()

    def _fold_locked(self) -> None:
        """Fold the pending records in, column by column (records whose series was
        cleared meanwhile find no row and are dropped)."""
        if self._queries:
            rows, columns = pending.drain(self._aggregate.branches, self._queries, pending.QUERIES)
            self._aggregate.add_queries(rows, *columns)
        if self._events:
            rows, columns = pending.drain(self._aggregate.events, self._events, pending.EVENTS)
            self._aggregate.add_events(rows, *columns)

    # -- configuration ------------------------------------------------------

    def configure(self, experiment: str, config: ExperimentConfig | Mapping[str, Any]) -> None:
        """Set how an experiment is analysed (replaces any earlier config)."""
        self.configure_once(experiment, config)

    def configure_once(
        self,
        experiment: str,
        config: ExperimentConfig | Mapping[str, Any],
        once: Once | None = None,
        answer: Answer | None = None,
    ) -> Written:
        """Set how an experiment is analysed (replaces any earlier config). Configs count
        against the experiments limit, allocations against the branches limit."""
        check_name("experiment", experiment, self.limits.max_name_length)
        if not isinstance(config, ExperimentConfig):
            config = ExperimentConfig.from_mapping(config)
        allocation = config.allocation or {}
        if len(allocation) > self.limits.max_branches:
            raise LimitError(
                "limit_branches",
                f"the allocation names {len(allocation)} branches; the limit is "
                f"{self.limits.max_branches}",
            )
        with self._lock:
            if (entry := self._repeat(once)) is not None:
                return entry
            if experiment not in self._configs and len(self._configs) >= max(
                self.limits.max_experiments, len(self._file_configs)
            ):
                raise LimitError(
                    "limit_configs",
                    f"the limit of {self.limits.max_experiments} experiment configs is reached; "
                    "delete one first",
                )
            self._configs[experiment] = config
            self._changed_configs.add(experiment)
            self._aggregate.bump()
            return self._written(once, answer)

    def remove_config(self, experiment: str) -> bool:
        """Drop a config set through the API; False if there was none."""
        return self.remove_config_once(experiment) is not None

    def remove_config_once(
        self, experiment: str, once: Once | None = None, answer: Answer | None = None
    ) -> Written | None:
        """Drop a config set through the API (back to the file's, or the defaults);
        None if there was none."""
        with self._lock:
            if (entry := self._repeat(once)) is not None:
                return entry
            current = self._configs.get(experiment)
            if current is None or current is self._file_configs.get(experiment):
                return None
            file_config = self._file_configs.get(experiment)
            if file_config is None:
                del self._configs[experiment]
            else:
                self._configs[experiment] = file_config
            self._changed_configs.add(experiment)
            self._aggregate.bump()
            return self._written(once, answer)

    # -- persistence -----------------------------------------------------------

    def changes_for_store(self) -> StoreBatch:
        """Everything changed since the last call, copied under the lock: the state of
        each touched series (not the records that led there), removals, configs."""
        with self._lock:
            self._fold_locked()
            rows = self._aggregate.export_changes(_STORED_BRANCH_COLUMNS)
            configs = {
                e: c if (c := self._configs.get(e)) is not self._file_configs.get(e) else None
                for e in self._changed_configs
            }
            self._changed_configs = set()
            return StoreBatch(
                self._aggregate.version,
                rows.changes,
                rows.branches,
                rows.events,
                configs,
                rows.activity,
                self.receiver.streams.take_changes(),
                self._keys.take_changes(),
            )

    def return_changes(self, batch: StoreBatch) -> None:
        """A store write failed: mark what it carried as changed again, for the next try."""
        with self._lock:
            self._aggregate.return_changes(
                batch.changes, batch.branches, batch.events, (e for e, _ in batch.activity)
            )
            self._changed_configs |= set(batch.configs)
            self.receiver.streams.return_changes(batch.streams)
            self._keys.return_changes(batch.keys)

    def restore(self, restored: Restored) -> int:
        """Load what the data file holds. It is already durable, so only what was recorded
        before the restore stays marked changed. Returns the version that includes it."""
        with self._lock:
            self._fold_locked()
            self._aggregate.load(restored.branches, restored.events, restored.activity)
            self._configs.update(restored.configs)
            self.receiver.streams.load(restored.streams, restored.horizon, restored.stored_streams)
            self._keys.load(restored.keys)
            return self._aggregate.version

    def replace(self, branches: BranchParts, events: EventParts, activity: dict[str, float]) -> int:
        """Swap the whole aggregate for one built from these parts, in one step (the
        analyzer's global view, rebuilt from Prometheus every round; configs stay).
        Returns the new version, above every earlier one so caches refresh."""
        fresh = Aggregate(self._aggregate.bounds)
        fresh.add_parts(branches, events, None)
        fresh.touch_latest(activity)
        fresh.take_changes()  # nothing to persist: Prometheus holds the sums
        with self._lock:
            self._fold_locked()
            fresh.version = self._aggregate.version + 1
            self._forget_keys(None)
            self._aggregate = fresh
            return fresh.version

    def get_config(self, experiment: str) -> ExperimentConfig:
        return self._configs.get(experiment, ExperimentConfig())

    # -- reading -------------------------------------------------------------

    def get_experiment_metrics(self, experiment: str) -> ExperimentMetrics | None:
        with self._lock:
            self._fold_locked()
            return build_experiment(
                self._aggregate.live_view(), experiment, self.get_config(experiment), self._clock()
            )

    def get_branch_metrics(self, experiment: str, branch: str) -> BranchMetrics | None:
        with self._lock:
            self._fold_locked()
            view = self._aggregate.live_view()
            row = view.experiments.get(experiment, {}).get(branch)
            if row is None:
                return None
            events = events_by_branch(view, experiment).get(branch, [])
            return build_branch(view, row, branch, events)

    def compare_branches(
        self, experiment: str, branch_a: str, branch_b: str
    ) -> BranchComparison | None:
        """B against A with every metric's statistics (A is treated as the control)."""
        with self._lock:
            self._fold_locked()
            view = self._aggregate.live_view()
            config = self.get_config(experiment)
            metrics = build_experiment(view, experiment, config, self._clock())
            if metrics is None:
                return None
            analysis = analyse(view, self._configs, [experiment], {experiment: branch_a})
        return compare(metrics, analysis[experiment], branch_a, branch_b)

    def analyse(self, experiment: str | None = None) -> Analyses:
        """Every treatment against the control, SRM and percentiles (default: all
        experiments, computed from a snapshot so the lock is held only to copy)."""
        if experiment is None:
            snapshot = self.snapshot()
            return analyse(snapshot.view, snapshot.configs)
        with self._lock:
            self._fold_locked()
            return analyse(self._aggregate.live_view(), self._configs, [experiment])

    def get_summary(self, experiment: str) -> ExperimentSummary | None:
        with self._lock:
            self._fold_locked()
            return summarise(
                self._aggregate.live_view(), experiment, self.get_config(experiment), self._clock()
            )

    def all_summaries(self) -> list[ExperimentSummary]:
        with self._lock:
            self._fold_locked()
            view, now = self._aggregate.live_view(), self._clock()
            found = (summarise(view, e, self.get_config(e), now) for e in view.experiments)
            return [s for s in found if s is not None]

    def experiments(self) -> list[str]:
        with self._lock:
            self._fold_locked()
            return list(self._aggregate.experiments)

    def clear_experiment(self, experiment: str) -> bool:
        """Forget an experiment's data (its config stays); True if it existed."""
        return self.clear_experiment_once(experiment) is not None

    def clear_experiment_once(
        self, experiment: str, once: Once | None = None, answer: Answer | None = None
    ) -> Written | None:
        """clear_experiment for the HTTP API: None if it did not exist."""
        with self._lock:
            if (entry := self._repeat(once)) is not None:
                return entry
            self._fold_locked()
            if not self._remove_locked(experiment):
                return None
            return self._written(once, answer)

    def _remove_locked(self, experiment: str) -> bool:
        self._forget_keys(experiment)
        return self._aggregate.remove_experiment(experiment)

    def expire(self, idle_for: float) -> list[str]:
        """Remove experiments with no write for `idle_for` seconds; returns their names.
        Found idle and removed under one hold of the lock: a write landing in between
        would be acknowledged and then removed with an experiment no longer idle."""
        with self._lock:
            self._fold_locked()
            view, cutoff = self._aggregate.live_view(), self._clock() - idle_for
            idle = [
                e
                for e, rows in view.experiments.items()
                if (last := activity(view, e, rows)[1]) is None or last < cutoff
            ]
            for experiment in idle:
                self._remove_locked(experiment)
        return idle

    def clear_all(self) -> None:
        """Forget all data and the configs set through the API (the file's stay)."""
        self.clear_all_once()

    def clear_all_once(self, once: Once | None = None, answer: Answer | None = None) -> Written:
        """clear_all for the HTTP API (a repeat of `once` applies nothing)."""
        with self._lock:
            if (entry := self._repeat(once)) is not None:
                return entry
            self._fold_locked()
            self._forget_keys(None)
            self._aggregate.clear()
            self._changed_configs |= set(self._configs) | set(self._file_configs)
            self._configs = dict(self._file_configs)
            return self._written(once, answer)

    def stats(self) -> MetricsStats:
        with self._lock:
            self._fold_locked()
            return self._stats_locked()

    def _stats_locked(self) -> MetricsStats:
        experiments, branches, queries, events = self._aggregate.totals()
        return MetricsStats(
            experiments_tracked=experiments,
            total_branches_tracked=branches,
            total_queries_recorded=queries,
            total_events_recorded=events,
        )

    def snapshot(self) -> Snapshot:
        """A copy of everything, taken under the lock in one step (cheap: column copies)."""
        with self._lock:
            self._fold_locked()
            return Snapshot(
                self._aggregate.snapshot(),
                dict(self._configs),
                self._clock(),
                self._aggregate.version,
                self._stats_locked(),
            )

    def settled_version(self) -> int:
        """The version once pending records are folded in (cheap when nothing changed)."""
        with self._lock:
            self._fold_locked()
            return self._aggregate.version

    @property
    def version(self) -> int:
        """Changes whenever the aggregate or a config changed (pending records aside)."""
        return self._aggregate.version


def _left_out(items: Sequence[StreamKey], kept: Sequence[int]) -> set[StreamKey]:
    if len(kept) == len(items):  # all kept (indices are distinct): the usual case
        return set()
    keep = set(kept)
    return {item for index, item in enumerate(items) if index not in keep}


@dataclass(frozen=True, slots=True)
class Restored:
    """What the data file held, checked, ready to load."""

    branches: BranchParts
    events: EventParts
    activity: dict[str, float]
    configs: dict[str, ExperimentConfig]
    streams: list[tuple[StreamKey, str]]
    horizon: int
    keys: list[tuple[str, str]]
    stored_streams: int  # stream states in the file (only the recent ones in `streams`)


def _checked_query(latency_ms: object, success: object) -> float:
    """The hot path's slow lane: a latency of another class (a float subclass, say) or
    out of range, or a success that is not a bool. Returns the latency as a float."""
    problem = latency_problem(latency_ms)
    if problem is not None:
        raise ValidationError("invalid_latency", f"latency_ms {problem}")
    if (problem := success_problem(success)) is not None:
        raise ValidationError("invalid_success", f"success {problem}")
    return float(latency_ms)  # type: ignore[arg-type]


def _checked_value(value: object) -> float:
    problem = event_value_problem(value)
    if problem is not None:
        raise ValidationError("invalid_value", f"value {problem}")
    return float(value)  # type: ignore[arg-type]


def _interned(name: str) -> str:
    """One shared copy of a name (a str subclass is kept as given)."""
    return sys.intern(name) if name.__class__ is str else name
