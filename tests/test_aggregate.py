"""The aggregate beyond the seed: moments, histogram, time, control, threads, input checks."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import threading

import numpy as np
import pytest

from exporter import ABMetrics, ExperimentConfig, ValidationError
from exporter.core import aggregate as aggregate_module
from exporter.core.tables import RowMarks

from .conftest import FakeClock


def test_variance_is_stable_for_large_means(metrics: ABMetrics) -> None:
    # Latencies around 1e9 ms varying by tenths: the naive sum-of-squares formula
    # returns garbage (often negative) here; Welford/Chan must give the exact variance.
    values = [1e9 + 0.1 * (i % 7) for i in range(10_000)]
    for value in values:
        metrics.record_query("e", "b", value, True)
    branch = metrics.get_branch_metrics("e", "b")
    assert branch is not None
    assert branch.latency_variance_ms2 == pytest.approx(statistics.variance(values), rel=1e-6)
    naive = (sum(v * v for v in values) - sum(values) ** 2 / len(values)) / (len(values) - 1)
    assert abs(naive - statistics.variance(values)) > 1.0  # the trap this avoids is real


def test_moments_merge_across_batches_like_one_pass(metrics: ABMetrics) -> None:
    rng = random.Random(7)
    values = [rng.expovariate(1 / 50) for _ in range(20_000)]  # > one fold of 4096
    for value in values:
        metrics.record_query("e", "b", value, rng.random() < 0.9)
        metrics.record_event("e", "b", "revenue", value / 10)
    branch = metrics.get_branch_metrics("e", "b")
    assert branch is not None
    assert branch.avg_latency_ms == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert branch.latency_variance_ms2 == pytest.approx(statistics.variance(values), rel=1e-9)
    assert branch.min_latency_ms == min(values)
    assert branch.max_latency_ms == max(values)
    revenue = branch.events["revenue"]
    assert revenue.count == len(values)
    assert revenue.variance == pytest.approx(statistics.variance(v / 10 for v in values), rel=1e-9)


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    metrics = ABMetrics(buckets=(0.01, 0.1, 1.0))
    for latency in (10.0, 10.000001, 100.0, 5000.0, 0.0):
        metrics.record_query("e", "b", latency, True)
    branch = metrics.get_branch_metrics("e", "b")
    assert branch is not None
    # 10 ms lands in le=0.01 (upper bounds are inclusive), 5 s only in +Inf
    assert branch.latency_buckets == ((0.01, 2), (0.1, 4), (1.0, 4), (math.inf, 5))


@pytest.mark.parametrize("bounds", [(), (0.1, 0.1), (0.2, 0.1), (-1.0,), (math.inf,), (math.nan,)])
def test_bad_bucket_bounds_are_refused(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        ABMetrics(buckets=bounds)


def test_first_and_last_query_times(metrics: ABMetrics, clock: FakeClock) -> None:
    metrics.record_query("e", "a", 1.0, True)
    clock.now += 10
    metrics.record_query("e", "b", 1.0, True)
    clock.now += 5
    metrics.record_query("e", "a", 1.0, True)
    metrics.record_event("e", "a", "x", 1.0)  # a write at the same time as the last query
    clock.now += 100
    experiment = metrics.get_experiment_metrics("e")
    assert experiment is not None
    a = experiment.branches["a"]
    assert (a.first_query, a.last_query) == (1_700_000_000.0, 1_700_000_015.0)
    assert experiment.started_at == 1_700_000_000.0
    assert experiment.last_activity == 1_700_000_015.0
    assert experiment.duration_seconds == 115.0


def test_control_defaults_and_configuration(metrics: ABMetrics) -> None:
    metrics.record_query("e", "b", 1.0, True)
    metrics.record_query("e", "a", 1.0, True)
    experiment = metrics.get_experiment_metrics("e")
    assert experiment is not None and experiment.control == "b"  # first seen
    metrics.record_query("e", "control", 1.0, True)
    experiment = metrics.get_experiment_metrics("e")
    assert experiment is not None and experiment.control == "control"
    metrics.configure("e", {"control": "a"})
    experiment = metrics.get_experiment_metrics("e")
    assert experiment is not None and experiment.control == "a"
    assert metrics.get_config("e") == ExperimentConfig(control="a")


def test_best_branch_tie_breaks_are_defined(metrics: ABMetrics) -> None:
    for branch in ("zeta", "alpha"):
        metrics.record_query("e", branch, 1.0, True)
    summary = metrics.get_summary("e")
    assert summary is not None and summary.best_branch == "alpha"  # equal: by name
    metrics.record_event("e", "events-only", "x", 1.0)
    summary = metrics.get_summary("e")
    assert summary is not None and summary.best_branch == "alpha"  # no queries: never best


def test_results_are_immutable(metrics: ABMetrics) -> None:
    metrics.record_query("e", "b", 1.0, True)
    metrics.record_event("e", "b", "x", 1.0)
    branch = metrics.get_branch_metrics("e", "b")
    assert branch is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        branch.query_count = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        branch.events["y"] = branch.events["x"]  # type: ignore[index]


def test_concurrent_recording_loses_nothing(metrics: ABMetrics) -> None:
    threads, per_thread = 4, 25_000

    def work(seed: int) -> None:
        for i in range(per_thread):
            metrics.record_query("e", f"b{i % 3}", float(i % 100), i % 10 != 0)
            if i % 5 == 0:
                metrics.record_event("e", f"b{i % 3}", "conversion", 1.0)

    def read() -> None:
        for _ in range(50):
            experiment = metrics.get_experiment_metrics("e")
            if experiment is not None:
                # one consistent view: every counted query has its latency bucketed
                for b in experiment.branches.values():
                    assert b.latency_buckets[-1][1] == b.query_count

    workers = [threading.Thread(target=work, args=(s,)) for s in range(threads)]
    reader = threading.Thread(target=read)
    for t in (*workers, reader):
        t.start()
    for t in (*workers, reader):
        t.join()
    stats = metrics.stats()
    assert stats.total_queries_recorded == threads * per_thread
    assert stats.total_events_recorded == threads * per_thread // 5
    experiment = metrics.get_experiment_metrics("e")
    assert experiment is not None
    assert (
        sum(b.success_count for b in experiment.branches.values()) == threads * per_thread * 9 // 10
    )


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("", "b", 1.0, True), "invalid_name"),
        (("e", "x" * 129, 1.0, True), "invalid_name"),
        (("e", "a\nb", 1.0, True), "invalid_name"),
        (("e", "a\x00", 1.0, True), "invalid_name"),
        ((1, "b", 1.0, True), "invalid_name"),
        (("e", "b", -1.0, True), "invalid_latency"),
        (("e", "b", math.nan, True), "invalid_latency"),
        (("e", "b", math.inf, True), "invalid_latency"),
        (("e", "b", "12", True), "invalid_latency"),
    ],
)
def test_in_process_input_is_checked(metrics: ABMetrics, args: tuple, reason: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError) as caught:
        metrics.record_query(*args)
    assert caught.value.reason == reason
    assert metrics.stats().total_queries_recorded == 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e16, "1"])
def test_event_values_are_checked(metrics: ABMetrics, value: object) -> None:
    with pytest.raises(ValidationError):
        metrics.record_event("e", "b", "x", value)  # type: ignore[arg-type]
    assert metrics.stats().total_events_recorded == 0


def test_cleared_rows_are_reused_and_zeroed(metrics: ABMetrics) -> None:
    for i in range(200):
        metrics.record_query(f"e{i}", "b", 5.0, True)
    for i in range(200):
        metrics.clear_experiment(f"e{i}")
    metrics.record_query("fresh", "b", 7.0, False)
    branch = metrics.get_branch_metrics("fresh", "b")
    assert branch is not None
    assert (branch.query_count, branch.failure_count, branch.min_latency_ms) == (1, 1, 7.0)
    snapshot = metrics.snapshot()
    assert int(np.sum(snapshot.view.branch.n)) == 1


def test_config_is_validated_with_every_problem_named(metrics: ABMetrics) -> None:
    with pytest.raises(ValidationError) as caught:
        metrics.configure("e", {"alpha": 2, "correction": "bonferroni", "colour": "red"})
    message = caught.value.message
    for key in ("alpha", "correction", "colour"):
        assert key in message


def test_pre_aggregated_parts_merge_like_the_records_they_summarise() -> None:
    from exporter.core.aggregate import BranchParts, EventParts

    rng = random.Random(3)
    chunks = [[rng.expovariate(1 / 40) for _ in range(rng.randint(1, 50))] for _ in range(30)]
    direct, parted = ABMetrics(buckets=(0.01, 0.05, 0.1)), ABMetrics(buckets=(0.01, 0.05, 0.1))
    parts, events = BranchParts(), EventParts()
    for i, chunk in enumerate(chunks):
        branch = f"b{i % 3}"
        for value in chunk:
            direct.record_query("e", branch, value, value < 60)
            direct.record_event("e", branch, "v", value)
        mean = statistics.fmean(chunk)
        m2 = sum((v - mean) ** 2 for v in chunk)
        buckets = [0, 0, 0, 0]
        for value in chunk:
            buckets[sum(value / 1000 > b for b in (0.01, 0.05, 0.1))] += 1
        parts.append(
            ("e", branch),
            len(chunk),
            sum(v < 60 for v in chunk),
            sum(chunk),
            m2,
            min(chunk),
            max(chunk),
            0.0,
            0.0,
            buckets,
        )
        events.append(("e", branch, "v"), len(chunk), sum(chunk), m2)
    parted.record_parts(parts, events)
    for branch in ("b0", "b1", "b2"):
        a, b = direct.get_branch_metrics("e", branch), parted.get_branch_metrics("e", branch)
        assert a is not None and b is not None
        assert (a.query_count, a.success_count, a.latency_buckets) == (
            b.query_count,
            b.success_count,
            b.latency_buckets,
        )
        assert b.latency_variance_ms2 == pytest.approx(a.latency_variance_ms2, rel=1e-9)
        assert b.avg_latency_ms == pytest.approx(a.avg_latency_ms, rel=1e-12)
        assert (b.min_latency_ms, b.max_latency_ms) == (a.min_latency_ms, a.max_latency_ms)
        assert b.events["v"].variance == pytest.approx(a.events["v"].variance, rel=1e-9)


def test_the_sum_of_squares_is_a_running_column_that_adds_up() -> None:
    """Issue 11: Σx² is kept exactly like the other columns (per record, then by part)."""
    from exporter.core.aggregate import Aggregate, BranchParts, EventParts

    whole, halves = Aggregate(), Aggregate()
    latencies = [12.5, 40.0, 3.25, 1000.0]
    rows = whole.branch_rows([("e", "b")] * 4)
    whole.add_queries(rows, latencies, [True] * 4, [1.0] * 4)
    assert whole.branches.columns["sq"][rows[0]] == sum(x * x for x in latencies)
    parts = BranchParts()
    for chunk in (latencies[:2], latencies[2:]):
        n, total = len(chunk), sum(chunk)
        m2 = sum((x - total / n) ** 2 for x in chunk)
        parts.append(("e", "b"), n, n, total, m2, min(chunk), max(chunk), 1.0, 1.0,
                  [0] * (len(halves.bounds) + 1), sum(x * x for x in chunk))  # fmt: skip
    halves.add_parts(parts, EventParts(), None)
    assert halves.branches.columns["sq"][0] == sum(x * x for x in latencies)


def test_selecting_parts_keeps_the_chosen_entries_in_order_and_copies_all() -> None:
    from exporter.core.aggregate import EventParts

    parts = EventParts(
        keys=[("e", "a", "x"), ("e", "b", "x"), ("e", "c", "x")],
        count=[1, 2, 3], total=[1.0, 2.0, 3.0], m2=[0.0, 0.5, 1.0], sq=[1.0, 4.0, 9.0],
    )  # fmt: skip
    some = parts.select([0, 2])
    assert (some.keys, some.count, some.total) == (
        [("e", "a", "x"), ("e", "c", "x")],
        [1, 3],
        [1.0, 3.0],
    )
    every = parts.select([0, 1, 2])
    assert every == parts and every.count is not parts.count  # a copy, not the same lists
    assert parts.select([2, 1, 0]).count == [3, 2, 1]  # same length, other order
    assert parts.select([]).count == []


@pytest.mark.parametrize("count", [1, 2, 16, 32, 33, 40])
def test_bucket_slots_are_what_a_binary_search_finds(count: int) -> None:
    """Counted (up to 32 bounds) or searched, a value's bucket is the number of bounds
    below it: a value equal to a bound is in that bound's bucket."""
    from exporter.core.aggregate import bucket_slots

    rng = np.random.default_rng(count)
    bounds = np.unique(rng.uniform(1e-4, 100, count))
    values = np.concatenate(
        [
            bounds,  # on each bound
            np.nextafter(bounds, np.inf),
            np.nextafter(bounds, -np.inf),
            [0.0, -0.0, 1e12, 5e-324, np.inf],
            rng.uniform(0, 120, 5000),
        ]
    )
    expected = np.searchsorted(bounds, values, side="left")
    assert np.array_equal(bucket_slots(bounds, values), expected)
    assert np.array_equal(bucket_slots(bounds, values[:0]), expected[:0])


def test_row_marks_hold_each_row_once_in_order_past_their_first_room() -> None:
    marks = RowMarks(4)
    assert not marks and marks.rows() == []
    marks.mark(np.array([], dtype=np.intp))
    assert not marks
    marks.mark(np.array([9, 2, 2], dtype=np.intp))
    marks.add(3)
    marks.mark([70, 2])
    assert marks and marks.rows() == [2, 3, 9, 70]
    assert marks.capacity >= 71
    other = RowMarks()
    other.mark([70, 9, 3, 2])
    assert marks == other and marks != RowMarks()


PACK_FROM = aggregate_module._PACK_FROM


@pytest.mark.parametrize("size", [0, 1, PACK_FROM - 1, PACK_FROM, 1000])
def test_lists_packed_to_numpy_equal_what_asarray_makes(size: int) -> None:
    rng = random.Random(size)
    choices = (
        lambda: rng.uniform(-1e12, 1e12),
        lambda: rng.randrange(-(2**60), 2**60),  # ints, some past a float's 53 bits
        lambda: 0.1 + 0.2,
        lambda: -0.0,
    )
    numbers = [rng.choice(choices)() for _ in range(size)]
    flags = [rng.random() < 0.5 for _ in range(size)]
    rows = [rng.randrange(0, 2**40) for _ in range(size)]
    floats = aggregate_module.floats(numbers)
    assert floats.dtype == np.float64
    assert floats.tobytes() == np.asarray(numbers, dtype=np.float64).tobytes()
    bools = aggregate_module.bools(flags)
    assert bools.dtype == np.bool_ and bools.tobytes() == np.asarray(flags, np.bool_).tobytes()
    row_numbers = aggregate_module.row_numbers(rows)
    assert row_numbers.dtype == np.intp and row_numbers.tolist() == rows
