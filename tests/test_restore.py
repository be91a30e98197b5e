"""Issue 9, item 9 and 13: a data file that cannot be trusted stops the start with one line
saying what to do; it never restores wrong numbers and never ends in a traceback."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporter import ABMetrics
from exporter.core.aggregate import DEFAULT_BUCKETS
from exporter.state.store import FILE_NAME, Store, StoreError, checksum, crc


def fill(metrics: ABMetrics) -> None:
    for i in range(40):
        metrics.record_query(f"exp{i % 4}", f"b{i % 3}", 5.0 + i * 1.5, i % 5 != 0)
        metrics.record_event(f"exp{i % 4}", f"b{i % 3}", "revenue", 3.25 * (i % 7) - 4.0)
    metrics.configure("exp1", {"control": "b1", "alpha": 0.01})


def state(metrics: ABMetrics) -> Any:
    """Everything a restore brings back, as plain values."""
    return (
        [
            (s.experiment, s.total_queries, s.last_activity, s.control)
            for s in metrics.all_summaries()
        ],
        {
            e: {b: repr(m) for b, m in found.branches.items()}
            for e in metrics.experiments()
            if (found := metrics.get_experiment_metrics(e)) is not None
        },
        repr(metrics.get_config("exp1")),
    )


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    directory = tmp_path_factory.mktemp("good")
    metrics = ABMetrics()
    store = Store(directory, metrics)
    store.open()
    fill(metrics)
    store.commit()
    store.close()  # the last connection checkpoints the log into the file
    restored = ABMetrics()
    Store(directory, restored).open()
    return directory / FILE_NAME, state(restored)


def test_single_bit_flips_never_restore_wrong_numbers(
    good_file: tuple[Path, Any], tmp_path: Path
) -> None:
    """Of 300 single-bit flips, 39 restored silently with wrong numbers and 15 ended in a
    raw traceback. Now each either restores exactly the original or stops with the
    move-aside line."""
    path, truth = good_file
    data = path.read_bytes()
    rng = random.Random(20261127)
    outcomes = {"same": 0, "refused": 0}
    written = [i for i, byte in enumerate(data) if byte]  # half the flips where data is
    for flip in range(300):
        directory = tmp_path / f"flip{flip}"
        directory.mkdir()
        damaged = bytearray(data)
        position = rng.choice(written) if flip % 2 else rng.randrange(len(damaged))
        damaged[position] ^= 1 << rng.randrange(8)
        (directory / FILE_NAME).write_bytes(bytes(damaged))
        metrics = ABMetrics()
        try:
            Store(directory, metrics).open()
        except StoreError as exc:
            assert "mv " in str(exc) and "\n" not in str(exc), exc
            outcomes["refused"] += 1
        else:
            assert state(metrics) == truth, f"bit flip at byte {position} changed the numbers"
            outcomes["same"] += 1
        shutil.rmtree(directory)
    print(f"300 single-bit flips: {outcomes}")
    assert outcomes["refused"] > 30 and outcomes["same"] > 30, outcomes


def test_invariants_are_checked_even_when_the_checksum_fits(
    good_file: tuple[Path, Any], tmp_path: Path
) -> None:
    """A row written wrong by a bug, not by the disk: ok > n with a matching checksum."""
    path, _ = good_file
    shutil.copy(path, tmp_path / FILE_NAME)
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        row = connection.execute("SELECT * FROM branches LIMIT 1").fetchone()
        values = (*row[:3], row[2] + 1, *row[4:12])  # ok = n + 1
        connection.execute("DELETE FROM branches WHERE experiment = ? AND branch = ?", row[:2])
        connection.execute(
            "INSERT INTO branches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, checksum("branches", values)),
        )
    with pytest.raises(StoreError, match=r"0 <= ok <= n.*mv "):
        Store(tmp_path, ABMetrics()).open()


def test_a_damaged_write_ahead_log_is_refused_not_cut_short(tmp_path: Path) -> None:
    """SQLite replays a log up to its first bad frame and silently drops every commit
    after it: the damaged log must stop the start instead."""
    live = tmp_path / "live"
    metrics = ABMetrics()
    store = Store(live, metrics)
    store.open()
    connection = store._connection
    assert connection is not None
    connection.execute("PRAGMA wal_autocheckpoint=0")
    for i in range(20):
        metrics.record_query("e", f"b{i}", float(i), True)
        store.commit()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(live / FILE_NAME, copy / FILE_NAME)
    shutil.copy(live / f"{FILE_NAME}-wal", copy / f"{FILE_NAME}-wal")
    store.close()
    intact = ABMetrics()
    Store(copy, intact).open()
    assert intact.stats().total_branches_tracked == 20
    for name in os.listdir(copy):
        if name != f"{FILE_NAME}-wal" and name != FILE_NAME:
            os.unlink(copy / name)
    wal = bytearray((copy / f"{FILE_NAME}-wal").read_bytes())
    assert len(wal) > 10_000
    wal[32 + 24 + 100] ^= 0x10  # page data of the first frame
    (copy / f"{FILE_NAME}-wal").write_bytes(bytes(wal))
    with pytest.raises(StoreError, match=r"-wal is damaged \(frame 0 .*mv "):
        Store(copy, ABMetrics()).open()


def test_a_format_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    """Files written before checksums existed are checked and given them."""
    counts = np.zeros(len(DEFAULT_BUCKETS) + 1, dtype="<i8")
    counts[3] = 4
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        connection.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE branches (experiment TEXT NOT NULL, branch TEXT NOT NULL,
                n INTEGER NOT NULL, ok INTEGER NOT NULL, total_ms REAL NOT NULL,
                lo REAL NOT NULL, hi REAL NOT NULL, m2 REAL NOT NULL, first REAL NOT NULL,
                last REAL NOT NULL, buckets BLOB NOT NULL, PRIMARY KEY (experiment, branch));
            CREATE TABLE events (experiment TEXT NOT NULL, branch TEXT NOT NULL,
                event TEXT NOT NULL, count INTEGER NOT NULL, total REAL NOT NULL,
                m2 REAL NOT NULL, PRIMARY KEY (experiment, branch, event));
            CREATE TABLE configs (experiment TEXT PRIMARY KEY, config TEXT NOT NULL);
            CREATE TABLE otlp_streams (stream TEXT PRIMARY KEY, state TEXT NOT NULL);
            """
        )
        connection.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("format_version", "1"), ("buckets", json.dumps(list(DEFAULT_BUCKETS)))],
        )
        connection.execute(
            "INSERT INTO branches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("old", "control", 4, 3, 20.0, 4.0, 6.0, 2.0, 1.7e9, 1.7e9 + 5, counts.tobytes()),
        )
        connection.execute("INSERT INTO events VALUES ('old', 'control', 'x', 2, 3.0, 0.5)")
    metrics = ABMetrics()
    Store(tmp_path, metrics).open()
    branch = metrics.get_branch_metrics("old", "control")
    assert branch is not None and (branch.query_count, branch.success_count) == (4, 3)
    assert branch.events["x"].total == 3.0
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        assert dict(connection.execute("SELECT key, value FROM meta"))["format_version"] == "4"


def _as_format_3(path: Path, damage: bool = False) -> None:
    """Give a file format 3's checksums (the text of every row's values) and version;
    with `damage`, change one branch's count after its checksum was taken."""
    with sqlite3.connect(path) as connection:
        for table in ("branches", "events", "activity"):
            rows = connection.execute(f"SELECT rowid, * FROM {table}").fetchall()
            assert rows, table
            connection.executemany(
                f"UPDATE {table} SET crc = ? WHERE rowid = ?",
                [(crc(tuple(row[1:-1])), row[0]) for row in rows],
            )
        version = ("format_version", "3")
        connection.execute("UPDATE meta SET value = ?, crc = ? WHERE key = ?",
                           (version[1], crc(version), version[0]))  # fmt: skip
        if damage:
            connection.execute("UPDATE branches SET n = n + 1, ok = ok + 1 WHERE rowid = 1")


def test_a_format_3_file_is_migrated_to_binary_checksums(
    good_file: tuple[Path, Any], tmp_path: Path
) -> None:
    path, truth = good_file
    shutil.copy(path, tmp_path / FILE_NAME)
    _as_format_3(tmp_path / FILE_NAME)
    metrics = ABMetrics()
    store = Store(tmp_path, metrics)
    store.open()
    store.close()
    assert state(metrics) == truth
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        assert dict(connection.execute("SELECT key, value FROM meta"))["format_version"] == "4"
        for table in ("branches", "events", "activity"):
            rows = connection.execute(f"SELECT * FROM {table}").fetchall()
            assert rows and all(row[-1] == checksum(table, row[:-1]) for row in rows)
            assert all(row[-1] != crc(row[:-1]) for row in rows)
    again = ABMetrics()
    Store(tmp_path, again).open()  # and the migrated file opens as format 4
    assert state(again) == truth


def test_a_kill_in_the_middle_of_the_migration_leaves_format_3_to_migrate_again(
    good_file: tuple[Path, Any], tmp_path: Path
) -> None:
    """SIGKILL after the first table is remade and before the second: the migration is one
    transaction, so the file is format 3 as it was, and the next start migrates it."""
    path, truth = good_file
    shutil.copy(path, tmp_path / FILE_NAME)
    _as_format_3(tmp_path / FILE_NAME)
    killed = subprocess.run(
        [sys.executable, "-c", (
            "import os, signal, sys\n"
            "from exporter import ABMetrics\n"
            "from exporter.state import store\n"
            "remake = store._rewrite\n"
            "def once(*args):\n"
            "    remake(*args)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "store._rewrite = once\n"
            "store.Store(sys.argv[1], ABMetrics()).open()\n"
        ), str(tmp_path)],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        assert dict(connection.execute("SELECT key, value FROM meta"))["format_version"] == "3"
        rows = connection.execute("SELECT * FROM branches").fetchall()
        assert rows and all(row[-1] == crc(row[:-1]) for row in rows)  # the old checksums
    metrics = ABMetrics()
    Store(tmp_path, metrics).open()
    assert state(metrics) == truth


def test_a_damaged_format_3_row_is_refused_not_given_a_fresh_checksum(
    good_file: tuple[Path, Any], tmp_path: Path
) -> None:
    path, _ = good_file
    shutil.copy(path, tmp_path / FILE_NAME)
    _as_format_3(tmp_path / FILE_NAME, damage=True)
    with pytest.raises(StoreError, match=r"fails its checksum.*mv "):
        Store(tmp_path, ABMetrics()).open()
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:  # the file was left as it was
        assert dict(connection.execute("SELECT key, value FROM meta"))["format_version"] == "3"


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("branches", "n", "four"),
        ("branches", "buckets", "x"),
        ("events", "total", b"\x00"),
        ("activity", "last", "soon"),
    ],
)
def test_a_value_of_the_wrong_kind_fails_the_binary_checksum(
    good_file: tuple[Path, Any], tmp_path: Path, table: str, column: str, value: Any
) -> None:
    """Text where a count belongs (and so on) cannot be packed: the row is refused in
    one line, whatever its stored checksum."""
    path, _ = good_file
    shutil.copy(path, tmp_path / FILE_NAME)
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        connection.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = 1", (value,))
    with pytest.raises(StoreError, match=r"mv ") as refused:
        Store(tmp_path, ABMetrics()).open()
    assert "\n" not in str(refused.value)


def test_a_format_2_file_is_migrated_with_its_sums_of_squares_rebuilt(tmp_path: Path) -> None:
    """Format 3 adds the running sum of squares; a format-2 row gets M2 + total²/n."""
    counts = np.zeros(len(DEFAULT_BUCKETS) + 1, dtype="<i8")
    counts[3] = 4
    branch = ("old", "control", 4, 3, 20.0, 4.0, 6.0, 2.0, 1.7e9, 1.7e9 + 5, counts.tobytes())
    event = ("old", "control", "x", 2, 3.0, 0.5)
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        connection.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, crc INTEGER);
            CREATE TABLE branches (experiment TEXT NOT NULL, branch TEXT NOT NULL,
                n INTEGER NOT NULL, ok INTEGER NOT NULL, total_ms REAL NOT NULL,
                lo REAL NOT NULL, hi REAL NOT NULL, m2 REAL NOT NULL, first REAL NOT NULL,
                last REAL NOT NULL, buckets BLOB NOT NULL, crc INTEGER,
                PRIMARY KEY (experiment, branch));
            CREATE TABLE events (experiment TEXT NOT NULL, branch TEXT NOT NULL,
                event TEXT NOT NULL, count INTEGER NOT NULL, total REAL NOT NULL,
                m2 REAL NOT NULL, crc INTEGER, PRIMARY KEY (experiment, branch, event));
            """
        )
        meta = [("format_version", "2"), ("buckets", json.dumps(list(DEFAULT_BUCKETS)))]
        connection.executemany("INSERT INTO meta VALUES (?, ?, ?)", [(*m, crc(m)) for m in meta])
        connection.execute(
            "INSERT INTO branches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*branch, crc(branch)),
        )
        connection.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", (*event, crc(event)))
    metrics = ABMetrics()
    Store(tmp_path, metrics).open()
    view = metrics.snapshot().view
    assert view.branch.sq[0] * 1e6 == pytest.approx(2.0 + 20.0**2 / 4, rel=1e-15)  # ms², stored
    assert view.event.sq[0] == 0.5 + 3.0**2 / 2
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        assert dict(connection.execute("SELECT key, value FROM meta"))["format_version"] == "4"
        assert connection.execute("SELECT sq FROM branches").fetchone() == (102.0,)


def test_a_data_directory_this_user_cannot_write(tmp_path: Path) -> None:
    """Issue 9, item 13: a traceback, or advice to move a healthy database aside. Run as
    an unprivileged user (root can write anywhere)."""
    import tempfile

    from .helpers import free_port

    base = Path(tempfile.mkdtemp(prefix="abtest-ro-", dir="/tmp"))
    os.chmod(base, 0o755)  # traversable by anyone, writable by root only
    readonly = base / "data"
    readonly.mkdir(mode=0o755)
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run as another user"
    result = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
         "-m", "exporter.cli", "serve", "--host", "127.0.0.1", "--port", str(free_port()),
         "--data-dir", str(readonly)],
        capture_output=True, text=True, timeout=30, check=False,
        cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    shutil.rmtree(base)
    assert result.returncode == 2, result.stderr
    assert "not writable by this user (uid 65534)" in result.stderr
    assert "Traceback" not in result.stderr and "mv " not in result.stderr


def test_a_latency_of_minus_zero_does_not_make_the_next_start_refuse_the_file(
    tmp_path: Path,
) -> None:
    """SQLite keeps no -0.0 in a REAL column (it reads back 0.0), but the checksum is
    taken over -0.0's bits: one record of latency -0.0 (or a part's min/max of -0.0,
    both accepted) and the next start calls the file damaged."""
    metrics = ABMetrics()
    store = Store(tmp_path, metrics)
    store.open()
    metrics.record_query("e", "b", -0.0, True)
    store.commit()
    store.close()
    again = ABMetrics()
    Store(tmp_path, again).open()  # StoreError: a row of branches fails its checksum
    branch = again.get_branch_metrics("e", "b")
    assert branch is not None and branch.query_count == 1


def test_a_row_of_the_wrong_kind_is_refused_whatever_its_stored_checksum(
    tmp_path: Path,
) -> None:
    """checksum() answers -1 for a value the table cannot hold; a stored crc of -1 then
    verifies it: text in a REAL column restored as the activity time."""
    metrics = ABMetrics()
    store = Store(tmp_path, metrics)
    store.open()
    metrics.record_event("e", "b", "x", 5.0)  # an event marks its experiment written
    store.commit()
    store.close()
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        changed = connection.execute("UPDATE activity SET last = 'nan', crc = -1").rowcount
    assert changed == 1
    with pytest.raises(StoreError, match=r"checksum.*mv "):
        Store(tmp_path, ABMetrics()).open()


def test_a_table_whose_columns_changed_stops_the_start(
    good_file: tuple[Path, Any], tmp_path: Path
) -> None:
    """A flipped bit in a column's name in the schema: rows are read with SELECT *, so
    the file opened and restored, then every commit and stream read failed."""
    path, _ = good_file
    shutil.copy(path, tmp_path / FILE_NAME)
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        connection.execute("ALTER TABLE otlp_streams RENAME COLUMN stream TO rtream")
    with pytest.raises(StoreError, match=r"table otlp_streams has columns \['rtream'.*mv "):
        Store(tmp_path, ABMetrics()).open()
