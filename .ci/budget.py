"""The test tiers' budget guard: print a tier's wall time against its budget and its slowest tests.

    python .ci/budget.py --label "make test" --start EPOCH --budget 720 --fail-after 1080 \
        --junit .pytest_cache/medmerge-test.xml --pytest-rc RC

Exit status: pytest's, except that 5 (nothing selected, e.g. a -k that matches no test of the tier)
counts as success, and that under CI (CI=true) a tier past --fail-after fails even when its tests
passed. Past --budget but not --fail-after it only warns, so noise on a shared machine never blocks a
submission while real growth does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path


def slowest(junit: Path, n: int) -> list[tuple[float, str]]:
    """The ``n`` slowest test cases of a JUnit XML report as (seconds, node id)."""
    if not junit.is_file():
        return []
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        cases.append((float(case.get("time", 0.0)), f"{module}.py::{case.get('name', '?')}"))
    return sorted(cases, reverse=True)[:n]


def mmss(seconds: float) -> str:
    return f"{int(seconds) // 60} min {int(seconds) % 60:02d} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", required=True)
    ap.add_argument("--start", type=float, required=True, help="the tier's start, seconds since the epoch")
    ap.add_argument("--budget", type=float, required=True, help="seconds the tier should take")
    ap.add_argument("--fail-after", type=float, default=None, help="seconds past which CI fails")
    ap.add_argument("--junit", type=Path, required=True)
    ap.add_argument("--pytest-rc", type=int, required=True)
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args(argv)

    wall = time.time() - a.start
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    rc = 0 if a.pytest_rc == 5 else a.pytest_rc
    print(f"\n{a.label}: slowest tests")
    for seconds, node in slowest(a.junit, a.top):
        print(f"  {seconds:7.1f} s  {node}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    verdict = "within budget" if wall <= a.budget else "OVER BUDGET"
    print(f"{a.label}: {mmss(wall)} wall, budget {mmss(a.budget)} ({100 * wall / a.budget:.0f}%): {verdict}"
          f" (load average {load:.2f} on {os.cpu_count()} cores)")
    if a.pytest_rc == 5:
        print(f"{a.label}: no test was selected (pytest exit 5): nothing to fail")
    if a.fail_after is not None and wall > a.fail_after:
        if ci:
            print(f"{a.label}: FAILED: past the {mmss(a.fail_after)} limit CI allows; find the new cost in "
                  "the slowest tests above", file=sys.stderr)
            return rc or 1
        print(f"{a.label}: past the {mmss(a.fail_after)} limit at which CI fails", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
