"""Scale-out end to end, with real processes: three --role ingest replicas and one
--role analyzer behind a real Prometheus give the figures one --role single exporter
gives for the same records; one replica alone does not; and a replica killed mid-feed
makes the analyzer hold its last output until the replica is back."""

from __future__ import annotations

import json
import math
import random
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import Exporter, Prometheus, http, wait_for

pytestmark = pytest.mark.prometheus

SEED = 20261127
QUERIES = 50_000
CONFIGS: dict[str, dict[str, Any]] = {
    "checkout": {"control": "control"},
    "ranking": {
        "control": "a",
        "allocation": {"a": 1.2, "b": 1.0, "c": 1.0},
        "correction": "bh",
    },
    "aa": {"control": "w", "correction": "holm"},
}
# experiment -> branch -> (share, success rate, latency mean ms, conversion, revenue mean)
SHAPE: dict[str, dict[str, tuple[float, float, float, float, float]]] = {
    "checkout": {
        "control": (1.0, 0.90, 120.0, 0.10, 30.0),
        "treatment": (1.0, 0.93, 100.0, 0.13, 33.0),
    },
    "ranking": {
        "a": (1.2, 0.95, 80.0, 0.05, 20.0),
        "b": (1.0, 0.95, 78.0, 0.06, 21.0),
        "c": (1.0, 0.94, 90.0, 0.05, 20.0),
    },
    "aa": {branch: (1.0, 0.97, 50.0, 0.2, 10.0) for branch in "wxyz"},
}
# time-valued figures (and the ETA, which moves with the clock) are compared by label only
TIMED = (
    "abtest_experiment_start_timestamp_seconds",
    "abtest_experiment_last_activity_timestamp_seconds",
    "abtest_experiment_duration_seconds",
    "abtest_comparison_eta_seconds",
)
# what a replica publishes (raw, mergeable) and the processes' own families
RAW = (
    "abtest_exporter_",
    "abtest_analyzer_",
    "abtest_queries_total",
    "abtest_query_",
    "abtest_event_value",
    "abtest_branch_latency_min_seconds",
    "abtest_branch_latency_max_seconds",
    "abtest_branch_first_query_timestamp_seconds",
    "abtest_branch_last_query_timestamp_seconds",
)
EXACT = ("abtest_comparison_significant", "abtest_srm_detected")
TIMED_KEYS = ("started_at", "last_activity", "duration_seconds", "eta_seconds", "first", "last",
              "computed_at", "taken_at")  # fmt: skip


def batches(rng: random.Random) -> list[dict[str, Any]]:
    """The seeded feed: ≥ 50k queries and their events, in batches of 1..2000 records."""
    records: list[tuple[str, dict[str, Any]]] = []
    experiments = list(SHAPE)
    for _ in range(QUERIES):
        experiment = rng.choice(experiments)
        branches = SHAPE[experiment]
        names = list(branches)
        branch = rng.choices(names, [branches[b][0] for b in names])[0]
        _, success, latency, conversion, revenue = branches[branch]
        records.append(
            ("queries", {
                "experiment": experiment, "branch": branch,
                "latency_ms": round(rng.lognormvariate(math.log(latency), 0.5), 3),
                "success": rng.random() < success,
            })
        )  # fmt: skip
        if rng.random() < conversion:
            base = {"experiment": experiment, "branch": branch}
            records.append(("events", {**base, "event": "conversion", "value": 1}))
            records.append(
                ("events", {**base, "event": "revenue",
                            "value": round(rng.expovariate(1 / revenue), 2)})
            )  # fmt: skip
    out: list[dict[str, Any]] = []
    while records:
        size = rng.randint(1, 2000)
        chunk, records = records[:size], records[size:]
        body: dict[str, Any] = {"queries": [], "events": []}
        for kind, record in chunk:
            body[kind].append(record)
        out.append(body)
    return out


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(name, labels): value} (label values hold no quotes here)."""
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, rest = head.partition("{")
        labels = frozenset(
            tuple(pair.split("=", 1)) for pair in rest.rstrip("}").split(",") if pair
        )
        series[(name, frozenset((k, v.strip('"')) for k, v in labels))] = float(value)
    return series


def derived(exporter: Exporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, raw = http(exporter.url + "/metrics")
    assert status == 200
    return {
        key: value
        for key, value in parse(raw.decode()).items()
        if key[0].startswith("abtest_") and not key[0].startswith(RAW)
    }


def untimed(
    series: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The series, time-valued ones (which move with the clock) left out."""
    return {key: value for key, value in series.items() if key[0] not in TIMED}


def close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= max(1e-9 * abs(a), 1e-12)


def metric_differences(
    reference: dict[tuple[str, frozenset[tuple[str, str]]], float],
    other: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> list[str]:
    problems = [f"label sets differ: {sorted(set(reference) ^ set(other))[:5]}"]
    if set(reference) == set(other):
        problems = []
    for key in set(reference) & set(other):
        name, a, b = key[0], reference[key], other[key]
        if name in TIMED:
            continue
        if (a != b) if name in EXACT else not close(a, b):
            problems.append(f"{name}{dict(key[1])}: {a!r} != {b!r}")
    return problems


def json_differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two read-API answers differ beyond the tolerance (times aside)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [
            p for k in a if k not in TIMED_KEYS for p in json_differences(a[k], b[k], f"{path}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list):
        if all(isinstance(x, str) for x in a + b):
            # names in first-seen order: within one batch that order is not in Prometheus
            return [] if sorted(a) == sorted(b) else [f"{path}: {a} != {b}"]
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True))
                for p in json_differences(x, y, f"{path}[{i}]")]  # fmt: skip
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int | float):
        return [] if a == b else [f"{path}: {a!r} != {b!r}"]
    if not isinstance(b, int | float):
        return [f"{path}: {a!r} != {b!r}"]
    return [] if close(float(a), float(b)) else [f"{path}: {a!r} != {b!r}"]


def analyses(exporter: Exporter) -> dict[str, Any]:
    return {e: exporter.get(f"/api/v1/experiments/{e}/analysis") for e in SHAPE}


class Cluster:
    def __init__(self, workdir: Path) -> None:
        common = ["--stats-interval", "1", "--log-level", "warning"]
        self.reference = Exporter([*common], wait=False)
        self.replicas = [Exporter([*common, "--role", "ingest"], wait=False) for _ in range(3)]
        self.prometheus = Prometheus(workdir, [f"127.0.0.1:{r.port}" for r in self.replicas])
        self.analyzer = Exporter(
            [*common, "--role", "analyzer", "--prometheus-url", self.prometheus.url],
            data_dir=tempfile.mkdtemp(prefix="abtest-analyzer-"),
            wait=False,
        )
        for process in (self.reference, *self.replicas, self.analyzer):
            wait_for(process.ready, 30, "an exporter to start")
        for experiment, config in CONFIGS.items():
            for process in (self.reference, self.analyzer):
                status, raw = http(
                    f"{process.url}/api/v1/experiments/{experiment}/config", config, "PUT"
                )
                assert status == 200, raw
        self.turn = 0

    def send(self, body: dict[str, Any], down: int | None = None) -> None:
        status, answer = self.reference.post(body)
        assert status == 200, answer
        live = [i for i in range(len(self.replicas)) if i != down]
        replica = self.replicas[live[self.turn % len(live)]]
        self.turn += 1
        status, answer = replica.post(body)
        assert status == 200, answer

    def analyzer_figure(self, name: str) -> float:
        series = parse(http(self.analyzer.url + "/metrics")[1].decode())
        return series.get((name, frozenset()), -math.inf)  # absent before a first success

    def settle(self) -> None:
        """Wait until Prometheus' sums equal the reference's totals, then one more
        analyzer round after that."""
        totals = self.reference.get("/api/v1/stats")
        queries, events = totals["total_queries_recorded"], totals["total_events_recorded"]
        try:  # generous: CI machines are shared, and scrapes time out after 1 s here
            self.prometheus.wait_value("sum(abtest_queries_total)", queries, 90)
            self.prometheus.wait_value("sum(abtest_event_value_count)", events, 90)
        except TimeoutError:
            per_replica = {
                r.url: r.get("/api/v1/stats")["total_queries_recorded"] for r in self.replicas
            }
            scraped = self.prometheus.query("sum by (instance) (abtest_queries_total)")
            up = self.prometheus.query("up")
            raise AssertionError(
                f"reference {queries}; replicas say {per_replica}; Prometheus has {scraped}; "
                f"up {up}"
            ) from None
        seen = time.time()
        wait_for(
            lambda: (
                self.analyzer_figure("abtest_analyzer_last_success_timestamp_seconds") > seen + 0.1
            ),
            30,
            "an analyzer round after the sums settled",
        )

    def check(self) -> None:
        sums = self.prometheus.query(
            "sum by (__name__, experiment, branch, event, le) "
            '({__name__=~"abtest_(queries_total|query_failures_total|query_duration_seconds_'
            '(bucket|sum|count)|event_value_(count|sum))"})'
        )
        reference = parse(http(self.reference.url + "/metrics")[1].decode())
        assert sums
        for sample in sums:
            labels = dict(sample["metric"])
            name = labels.pop("__name__")
            want = reference[(name, frozenset(labels.items()))]
            got = float(sample["value"][1])
            if name.endswith("_sum"):
                assert abs(got - want) <= 1e-12 * abs(want), (name, labels, got, want)
            else:
                assert got == want, (name, labels, got, want)
        reference_derived = derived(self.reference)
        assert len(reference_derived) > 400  # the comparison covers every derived series
        problems = metric_differences(reference_derived, derived(self.analyzer))
        assert not problems, "\n".join(problems[:20])
        problems = json_differences(analyses(self.reference), analyses(self.analyzer))
        assert not problems, "\n".join(problems[:20])

    def stop(self) -> None:
        for process in (self.analyzer, *self.replicas, self.reference):
            if process.process.poll() is None:
                process.stop()
        self.prometheus.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path)
    yield running
    running.stop()


def test_three_ingest_replicas_and_an_analyzer_read_as_one_process(cluster: Cluster) -> None:
    status, raw = http(cluster.analyzer.url + "/api/v1/records", {"queries": []})
    assert status == 404 and b"analyzer" in raw
    replica = parse(http(cluster.replicas[0].url + "/metrics")[1].decode())
    info = [labels for name, labels in replica if name == "abtest_exporter_build_info"]
    assert ("role", "ingest") in info[0]

    feed = batches(random.Random(SEED))
    assert sum(len(b["queries"]) for b in feed) >= 50_000
    half = len(feed) // 2
    for body in feed[:half]:
        cluster.send(body)
    cluster.settle()
    cluster.check()

    # one replica's own view is a slice: the same comparison tells it apart
    one = analyses(cluster.replicas[0])
    assert json_differences(analyses(cluster.reference), one) != []

    # kill -9 one replica mid-feed: the analyzer holds its last output, says incomplete
    before = untimed(derived(cluster.analyzer))
    victim = cluster.replicas[1]
    victim.stop(signal.SIGKILL)
    wait_for(
        lambda: cluster.analyzer_figure("abtest_analyzer_inputs_complete") == 0,
        20,
        "the analyzer to see its inputs incomplete",
    )
    rest = feed[half:]
    third = len(rest) // 3
    for body in rest[:third]:
        cluster.send(body, down=1)
    time.sleep(2.5)  # two more analyzer rounds
    assert cluster.analyzer_figure("abtest_analyzer_inputs_complete") == 0
    assert untimed(derived(cluster.analyzer)) == before

    # back on the same port and data dir, then the rest of the feed
    cluster.replicas[1] = Exporter(
        ["--stats-interval", "1", "--log-level", "warning", "--role", "ingest"],
        data_dir=victim.data_dir,
        port=victim.port,
    )
    for body in rest[third:]:
        cluster.send(body)
    cluster.settle()
    assert cluster.analyzer_figure("abtest_analyzer_inputs_complete") == 1
    cluster.check()

    # a clear on the analyzer reaches every replica, and the global view follows
    status, raw = http(cluster.analyzer.url + "/api/v1/experiments/aa", method="DELETE")
    assert status == 200, raw
    forwarded = json.loads(raw)["replicas"]
    assert sorted(forwarded) == sorted(r.url for r in cluster.replicas)
    assert set(forwarded.values()) == {200}
    for process in cluster.replicas:
        assert http(process.url + "/api/v1/experiments/aa")[0] == 404
    wait_for(
        lambda: http(cluster.analyzer.url + "/api/v1/experiments/aa")[0] == 404,
        20,
        "the analyzer's view to drop the cleared experiment",
    )
    assert http(cluster.analyzer.url + "/api/v1/experiments/ranking")[0] == 200


def test_a_failed_or_partial_round_keeps_the_last_output() -> None:
    """Without Prometheus: a query error, then a round missing a known replica, change
    nothing but the analyzer's own figures."""
    from exporter.core.aggregate import BranchParts, EventParts
    from exporter.ingest.prometheus import Inputs, PrometheusSource, QueryError
    from exporter.outputs.comparisons import ComparisonEngine
    from exporter.serve.analyzer import Analyzer
    from exporter.state.abmetrics import ABMetrics

    class Source(PrometheusSource):
        def __init__(self) -> None:
            super().__init__("http://127.0.0.1:9", 'job="x"', (0.1,))
            self.answers: list[Inputs | QueryError] = []

        def read(self, at: float) -> Inputs:
            answer = self.answers.pop(0)
            if isinstance(answer, QueryError):
                raise answer
            return answer

    def inputs(n: int, present: set[tuple[str, str]]) -> Inputs:
        parts = BranchParts()
        parts.append(("e", "a"), n, n, 10.0 * n, 0.0, 10.0, 10.0, 1.0, 2.0, [n, 0])
        both = {("x", "r0"), ("x", "r1")}
        return Inputs(parts, EventParts(), {"e": 2.0}, frozenset(both), frozenset(present), 1.0)

    source, metrics = Source(), ABMetrics(buckets=(0.1,))
    analyzer = Analyzer(source, metrics, ComparisonEngine(metrics))
    source.answers = [inputs(5, {("x", "r0"), ("x", "r1")}), QueryError("down"),
                      inputs(9, {("x", "r0")})]  # fmt: skip
    assert analyzer.round(10.0).complete
    assert analyzer.round(11.0).problem == "down"
    status = analyzer.round(12.0)
    assert not status.complete and "x/r1" in status.problem
    assert status.last_success == 10.0 and status.lag_seconds == 11.0
    branch = metrics.get_branch_metrics("e", "a")
    assert branch is not None and branch.query_count == 5
    figures = {f.name: f.samples for f in analyzer.families()}
    assert figures["abtest_analyzer_inputs_complete"][0].value == 0


def test_roles_are_checked_at_start() -> None:
    """An analyzer needs its Prometheus; the other roles take none."""
    import subprocess
    import sys

    for args, complaint in (
        (["--role", "analyzer"], "--role analyzer needs --prometheus-url"),
        (["--prometheus-url", "http://127.0.0.1:9"], "for --role analyzer only"),
        (["--role", "leader"], "must be one of single, ingest, analyzer"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "exporter.cli", "serve", "--port", "1", *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 2 and complaint in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("name", "labels", "value", "problem"),
    [
        ("abtest_queries_total", {}, "NaN", "is nan"),
        ("abtest_query_duration_seconds_sum", {}, "+Inf", "is inf"),
        ("abtest_query_failures_total", {}, "7", "do not add up"),  # more failures than queries
        ("abtest_query_duration_seconds_bucket", {"le": "fast"}, "1", "numeric le"),
    ],
)
def test_series_no_replica_could_publish_fail_the_round_not_the_analyzer(
    name: str, labels: dict[str, str], value: str, problem: str
) -> None:
    """A non-finite value, counts that do not add up or a bucket without a bound (another
    target matched by the selector, say) make the round fail in one line and keep the last
    output, never a traceback or a NaN published."""
    from exporter.ingest.prometheus import PrometheusSource
    from exporter.outputs.comparisons import ComparisonEngine
    from exporter.serve.analyzer import Analyzer
    from exporter.state.abmetrics import ABMetrics

    replica = {"job": "abtest", "instance": "r0"}
    branch = {**replica, "experiment": "e", "branch": "b"}
    good = {
        "abtest_queries_total": "4",
        "abtest_query_failures_total": "1",
        "abtest_query_duration_seconds_sum": "0.2",
        "abtest_query_duration_seconds_m2": "0.001",
        "abtest_branch_latency_min_seconds": "0.01",
        "abtest_branch_latency_max_seconds": "0.09",
        "abtest_branch_first_query_timestamp_seconds": "1",
        "abtest_branch_last_query_timestamp_seconds": "2",
    }

    class Canned(PrometheusSource):
        def __init__(self) -> None:
            super().__init__("http://127.0.0.1:9", 'job="abtest"', (0.1,))
            self.series = [
                *({"__name__": n, **branch} for n in good),
                {"__name__": "abtest_query_duration_seconds_bucket", **branch, "le": "0.1"},
                {"__name__": "abtest_query_duration_seconds_bucket", **branch, "le": "+Inf"},
            ]
            self.values = [*good.values(), "4", "4"]

        def query(self, expr: str, at: float) -> list[dict[str, Any]]:
            if "build_info" in expr and not expr.startswith("{"):
                return [{"metric": replica, "value": [at, "1" if "max" in expr else str(at)]}]
            return [
                {"metric": m, "value": [at, v]}
                for m, v in zip(self.series, self.values, strict=True)
            ]

    source, metrics = Canned(), ABMetrics(buckets=(0.1,))
    analyzer = Analyzer(source, metrics, ComparisonEngine(metrics))
    assert analyzer.round(10.0).complete
    for index, series in enumerate(source.series):  # spoil one series
        if series["__name__"] == name:
            source.series[index] = {**series, **labels}
            source.values[index] = value
            break
    status = analyzer.round(11.0)
    assert not status.complete and problem in status.problem
    found = metrics.get_branch_metrics("e", "b")
    assert found is not None and found.query_count == 4 and found.failure_count == 1
