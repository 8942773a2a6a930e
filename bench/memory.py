"""Memory: the supervisor's RSS per open container, and the spawn helpers' RSS.

Run as root from a clone (``--quick`` for a smoke run)::

    .venv/bin/python bench/memory.py [--quick] [--rounds N] [--count N] [--json FILE]

Each measurement is a fresh Python process (a worker: this script with
``--worker``), so that one backend's heap does not serve the next one's
allocations. A worker warms up (opens and closes a few), takes the supervisor's
RSS, opens N (200) containers running ``sleep`` with ``open_container``'s defaults
(three pipes each, host root, default confinement), 64 starts at a time, and takes
the RSS again: (after - before) / N is the supervisor's memory per open container.
It also reports its threads and fds per container, and the RSS of each spawn helper.
The same worker with ``anyio.open_process(["sleep", ...])`` (three pipes) is the
baseline: what an anyio process costs the same event loop. Workers run interleaved,
the order rotated from round to round; figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from statistics import median
from typing import Any

import anyio
import common
from common import Bench, table

KINDS = ("mydocker", "anyio.open_process")
BACKENDS = ("asyncio", "trio")


def _threads_fds() -> tuple[int, int]:
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


async def _open(kind: str, options: dict[str, Any]) -> Any:
    if kind == "mydocker":
        from supervisor import open_container

        return await open_container(["sleep", "100000"], **options)
    return await anyio.open_process(["sleep", "100000"])


async def _close(proc: Any) -> None:
    if isinstance(proc, anyio.abc.Process):
        proc.terminate()
        await proc.wait()
        await proc.aclose()
    else:
        await proc.aclose()


async def worker(kind: str, count: int, options: dict[str, Any]) -> dict[str, Any]:
    """Open ``count`` sleeping processes of ``kind``; what the supervisor's memory did."""
    from supervisor import spawn

    for _ in range(3):  # the helper, imports and first-use allocations
        await _close(await _open(kind, options))
    gc.collect()
    rss0, (threads0, fds0) = common.rss_kb(), _threads_fds()
    helpers0 = {h.pid: common.rss_kb(h.pid) for h in spawn.helpers()}
    procs: list[Any] = []
    limiter = anyio.Semaphore(64)

    async def start() -> None:
        async with limiter:
            procs.append(await _open(kind, options))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(start)
        gc.collect()
        rss1, (threads1, fds1) = common.rss_kb(), _threads_fds()
        helpers1 = {h.pid: (common.rss_kb(h.pid), common.rss_kb(h.pid, "RssAnon")) for h in spawn.helpers()}
        alive = sum(1 for p in procs if p.returncode is None)
    finally:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:  # concurrently: one by one takes long
                for p in procs:
                    tg.start_soon(_close, p)
    if alive != count:
        raise RuntimeError(f"{kind}: {count - alive} of {count} were not running")
    return {
        "rss_before_kb": rss0,
        "rss_after_kb": rss1,
        "per_process_kb": (rss1 - rss0) / count,
        "threads": [threads0, threads1],
        "fds_per_process": (fds1 - fds0) / count,
        # each helper: RSS before, after, and its anonymous part after
        "helpers_kb": [[helpers0.get(pid, 0), *kb] for pid, kb in helpers1.items()],
    }


def helper_rss(helpers: list[list[int]]) -> str:
    """The helpers' RSS before and after, and its anonymous part after (medians)."""
    if not helpers:
        return "-"
    before, after, anon = (median([h[i] for h in helpers]) / 1024 for i in (0, 1, 2))
    return f"{before:.1f} -> {after:.1f} MB ({anon:.1f} MB anon)"


def run_worker(kind: str, backend: str, count: int, bench: Bench) -> dict[str, Any]:
    """A fresh process running ``worker``; its figures."""
    argv = [sys.executable, __file__, "--worker", kind, "--backend", backend, "--count", str(count)]
    if bench.cgroup_parent:
        argv += ["--cgroup-parent", bench.cgroup_parent]
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE).stdout
    return json.loads(out.decode().splitlines()[-1])


def main() -> int:
    parser = common.arguments(__doc__, rounds=3)
    parser.add_argument("--count", type=int, help="containers per worker (default 200, --quick 50)")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--cgroup-parent", help=argparse.SUPPRESS)
    args = parser.parse_args()
    count = args.count or (50 if args.quick else 200)
    if args.worker:
        options = {"cgroup_parent": args.cgroup_parent} if args.cgroup_parent else {}
        print(json.dumps(anyio.run(worker, args.worker, count, options, backend=args.backend)))
        return 0
    rounds = common.rounds_of(args, full=3)
    figures: dict[str, Any] = {"machine": common.machine(), "rounds": rounds, "count": count}
    with Bench("bench/memory.py") as bench:
        print(f"bench/memory.py: {common.machine()}")
        print(f"{rounds} round(s) of a fresh worker per kind and backend, {count} sleeping processes each")
        cells = [(k, b) for k in KINDS for b in BACKENDS]
        samples: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in cells}
        for rnd in range(rounds):
            k = rnd % len(cells)
            for kind, backend in cells[k:] + cells[:k]:
                samples[kind, backend].append(run_worker(kind, backend, count, bench))
            print(f"  round {rnd + 1}/{rounds} done", file=sys.stderr)
        rows = []
        for kind, backend in cells:
            got = samples[kind, backend]
            helpers = [h for s in got for h in s["helpers_kb"]]
            rows.append(
                [
                    kind,
                    backend,
                    f"{median([s['rss_before_kb'] for s in got]) / 1024:.1f} MB",
                    f"{median([s['per_process_kb'] for s in got]):.1f} kB",
                    f"{median([s['fds_per_process'] for s in got]):.1f}",
                    "{} -> {}".format(*got[0]["threads"]),
                    helper_rss(helpers),
                ]
            )
            figures[f"{kind}, {backend}"] = got
        headers = [
            "kind",
            "backend",
            "RSS before",
            "RSS per open process",
            "fds per process",
            "threads",
            "spawn helper RSS",
        ]
        print(
            table(
                f"supervisor memory with {count} open sleeping processes (medians over rounds)", headers, rows
            )
        )
    common.write_json(args.json, figures)
    return 1 if bench.leaks else 0


if __name__ == "__main__":
    sys.exit(main())
