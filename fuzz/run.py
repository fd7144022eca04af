"""Run every fuzz target for a bounded time and report executions and crashes.

    python fuzz/run.py [--seconds 60] [--only NAME ...]

Each target runs in its own process under atheris (libFuzzer for Python), starting from
the corpus in ``fuzz/corpus/<target>`` when there is one. A crash leaves its input in
``fuzz/crashes/<target>/``; turn it into a regression test before fixing it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_one(name: str, seconds: int) -> tuple[int, int, float]:
    """Fuzz ``name``; returns (executions, crashes, seconds taken)."""
    crashes = HERE / "crashes" / name
    crashes.mkdir(parents=True, exist_ok=True)
    corpus = HERE / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        from targets import seeds

        for index, seed in enumerate(seeds(name)):
            (corpus / f"seed-{index}").write_bytes(seed)
    command = [
        sys.executable,
        str(HERE / "harness.py"),
        name,
        f"-max_total_time={seconds}",
        "-print_final_stats=1",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={crashes}/",
        str(corpus),
    ]
    started = time.monotonic()
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}
    )
    took = time.monotonic() - started
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", done.stderr)
    executions = int(executed.group(1)) if executed else 0
    crashed = len(list(crashes.iterdir()))
    if done.returncode != 0 and not crashed:
        crashed = 1
        sys.stderr.write(done.stderr[-3000:])
    return executions, crashed, took


def main() -> None:
    sys.path.insert(0, str(HERE))
    from targets import TARGETS

    parser = argparse.ArgumentParser(description="Fuzz voxgate's parsers.")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", 60)))
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    names = args.only or list(TARGETS)
    total_crashes = 0
    print(f"{'target':36} {'executions':>12} {'exec/s':>9} {'crashes':>8}")
    for name in names:
        executions, crashes, took = run_one(name, args.seconds)
        total_crashes += crashes
        print(
            f"{name:36} {executions:12d} {executions / max(took, 1e-9):9.0f} {crashes:8d}",
            flush=True,
        )
    sys.exit(1 if total_crashes else 0)


if __name__ == "__main__":
    main()
