"""The crash test, longer: many SIGKILLs of a real exporter under concurrent ingest.

    .venv/bin/python -m benchmarks.crash --kills 30
    .venv/bin/python -m benchmarks.crash --kills 30 --race   # two processes per restart

Every acknowledged record must be in /metrics at the end; records whose request got
no answer (the kill came mid-request) may or may not be.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from tests.crashing import KINDS, crash_cycle


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--race", action="store_true", help="restart as two exporters racing for the directory"
    )
    args = parser.parse_args()
    result = crash_cycle(
        tempfile.mkdtemp(prefix="abtest-crash-"), args.kills, args.seed, race=args.race
    )
    ok = True
    for what in KINDS:
        low = result.acknowledged[what]
        high = low + result.uncertain[what]
        held = low <= result.totals[what] <= high
        ok = ok and held
        print(
            f"{what:8s}: acknowledged {low:>9,}  unanswered {result.uncertain[what]:>6,}  "
            f"in /metrics {result.totals[what]:>11,.0f}  {'OK' if held else 'LOST'}"
        )
    races = f", {result.races} two-process races (one writer each time)" if args.race else ""
    print(f"{args.kills} kills{races}: {'no acknowledged record lost' if ok else 'RECORDS LOST'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
