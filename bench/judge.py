"""Benchmark: what a judge's limits cost, side by side in one run.

Run as root from the repository (about a minute; ``--quick`` for a smoke run)::

    python bench/judge.py            # or: python bench/judge.py --quick --json out.json

The start-to-exit latency (median, p90) at concurrency 1 and the throughput at
concurrency 1 and 64 of ``run_container(["/bin/true"])`` under each configuration,
all interleaved (every round runs every configuration at every concurrency, in a
rotated order, so drift of the machine hits all alike):

- ``bare``: no limits, and the container's figures not read at its end (what every
  container cost before usage.py: measured by turning the read off);
- ``none``: no limits (the figures are read at the end, as for every container);
- one limit alone: ``memory`` (256m), ``pids`` (64), ``cpu_time`` (2 s), ``wall_time``
  (5 s), ``ulimits`` (nofile and nproc);
- ``judge``: memory, pids, cpu_time and wall_time together, and the report
  (``usage.report`` as JSON), as ``mydocker run --report`` writes it.

Then, without containers, the supervisor's own work per container for each set of
limits (``create_cgroup`` and ``destroy`` in a loop; the median of each, CPU time),
the end-of-life read of the figures alone, and the CPU time timer's registration.
These are steadier than the container figures on a machine that is not idle.

Each line of the first table says what it costs over ``none``: milliseconds of latency at c=1,
microseconds per container at c=64 (1/throughput: on a saturated machine, the CPU
time a container costs), and the supervisor's own CPU time per container at c=64
(this process's, which other load on the machine disturbs less). Every container
is checked (status OK); a failure aborts the benchmark rather than producing a fast
wrong number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statistics
from types import SimpleNamespace

import anyio

from supervisor import DEVNULL, ContainerSpec, cgroups, enforce, run_container, usage

CONCURRENCY = (1, 64)
JUDGE_LIMITS = {"memory": "256m", "pids": 64, "cpu_time": 2, "wall_time": 5}

#: name -> run_container options (and whether the end-of-life read is turned off)
CONFIGS: dict[str, dict[str, Any]] = {
    "bare": {},
    "none": {},
    "memory": {"limits": {"memory": "256m"}},
    "pids": {"limits": {"pids": 64}},
    "cpu_time": {"limits": {"cpu_time": 2}},
    "wall_time": {"limits": {"wall_time": 5}},
    "ulimits": {"ulimits": {"nofile": 256, "nproc": 64}},
    "judge": {"limits": JUDGE_LIMITS},
}


@dataclass
class Cell:
    """One configuration at one concurrency. Each figure is the median over rounds
    of that round's figure: a burst of other load on the machine spoils one round,
    not the result."""

    latencies: list[float] = field(default_factory=list)
    #: per round: (containers/s, supervisor CPU us per container, median latency)
    rounds: list[tuple[float, float, float]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(r[0] for r in self.rounds) if self.rounds else 0.0

    @property
    def cpu_us(self) -> float:
        """CPU time of this (the supervisor's) process: less sensitive to other load."""
        return statistics.median(r[1] for r in self.rounds) if self.rounds else float("nan")

    @property
    def median(self) -> float:
        return statistics.median(r[2] for r in self.rounds) if self.rounds else float("nan")

    def quantile(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def _one(name: str) -> None:
    r = await run_container(["/bin/true"], stdout=DEVNULL, stderr=DEVNULL, **CONFIGS[name])
    if r.status != usage.OK:
        raise RuntimeError(f"{name}: {r.status} {r.returncode}")
    if name == "judge":
        assert r.usage is not None
        json.dumps(usage.report(r.returncode, r.signal, r.usage, usage.Verdict(r.status, r.limit, "")))


def _batch(name: str, n: int, concurrency: int, cell: Cell, backend: str) -> None:
    original = cgroups.ContainerCgroup.counters
    if name == "bare":  # the figures not read at the end: as before usage.py
        cgroups.ContainerCgroup.counters = lambda self: usage.Counters()  # type: ignore[method-assign]

    async def main() -> None:
        for _ in range(3):  # the spawn helper starts with the event loop's first spawn
            await _one(name)
        remaining = n
        lat: list[float] = []

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t = time.perf_counter()
                await _one(name)
                lat.append(time.perf_counter() - t)

        t0, cpu0 = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        cell.rounds.append((n / seconds, cpu / n * 1e6, statistics.median(lat)))
        cell.latencies += lat

    try:
        anyio.run(main, backend=backend)
    finally:
        cgroups.ContainerCgroup.counters = original  # type: ignore[method-assign]


def measure(
    names: list[str], rounds: int, base_n: dict[int, int], backend: str
) -> dict[str, dict[int, Cell]]:
    cells = {name: {c: Cell() for c in CONCURRENCY} for name in names}
    for rnd in range(rounds):
        for c in CONCURRENCY:
            k = (rnd + c) % len(names)
            for name in names[k:] + names[:k]:  # rotate who goes first
                _batch(name, base_n[c], c, cells[name][c], backend)
        print(f"  round {rnd + 1}/{rounds} done", file=sys.stderr)
    return cells


def report(cells: dict[str, dict[int, Cell]]) -> dict[str, Any]:
    base = cells["none"]
    out: dict[str, Any] = {}
    ms: Callable[[float], str] = lambda x: f"{x * 1e3:6.2f}"  # noqa: E731
    print(
        f"{'configuration':<12} {'c=1 median':>10} {'(p90)':>8} {'c=1 /s':>7} {'c=64 /s':>8}"
        f" {'+ms at c=1':>11} {'+us/ctr at c=64':>16} {'sup. CPU us/ctr':>16} {'+':>5}"
    )
    for name, by_c in cells.items():
        c1, c64 = by_c[1], by_c[64]
        d_lat = c1.median - base[1].median
        d_cost = (1 / c64.rate - 1 / base[64].rate) * 1e6 if c64.rate and base[64].rate else float("nan")
        print(
            f"{name:<12} {ms(c1.median):>10} {'(' + ms(c1.quantile(0.9)).strip() + ')':>8}"
            f" {c1.rate:7.0f} {c64.rate:8.0f} {d_lat * 1e3:+11.2f} {d_cost:+16.0f}"
            f" {c64.cpu_us:16.0f} {c64.cpu_us - base[64].cpu_us:+5.0f}"
        )
        out[name] = {
            "c1_median_ms": c1.median * 1e3,
            "c1_p90_ms": c1.quantile(0.9) * 1e3,
            "c1_rate": c1.rate,
            "c64_rate": c64.rate,
            "delta_c1_ms": d_lat * 1e3,
            "delta_c64_us_per_container": d_cost,
            "c64_supervisor_cpu_us": c64.cpu_us,
        }
    return out


def _median_us(xs: list[float]) -> float:
    return statistics.median(xs) * 1e6


def section_supervisor(n: int) -> dict[str, Any]:
    """The supervisor's cgroup work per container, without containers."""
    out: dict[str, Any] = {}
    layout = cgroups.current_layout()
    print(f"\nsupervisor CPU per container, no container ({n} each, medians):")
    print(f"{'limits':<12} {'create_cgroup':>14} {'destroy':>9} {'total':>7} {'+ over none':>12}")
    base = 0.0
    for name in ("none", "memory", "pids", "cpu_time", "judge"):
        spec0 = ContainerSpec(["true"], **CONFIGS[name])
        make: list[float] = []
        destroy: list[float] = []

        async def loop(
            spec0: ContainerSpec = spec0, make: list[float] = make, destroy: list[float] = destroy
        ) -> None:
            for _ in range(n):
                spec = spec0.evolve(id=os.urandom(32).hex())
                t0 = time.process_time()
                cg = cgroups.create_cgroup(spec, layout)
                t1 = time.process_time()
                assert cg is not None
                cg._close_child_fds()
                t2 = time.process_time()
                await cg.destroy()
                t3 = time.process_time()
                make.append(t1 - t0)
                destroy.append(t3 - t2)

        anyio.run(loop)
        total = _median_us(make) + _median_us(destroy)
        base = base or total
        made, gone = _median_us(make), _median_us(destroy)
        print(f"{name:<12} {made:12.0f}us {gone:7.0f}us {total:5.0f}us {total - base:+10.0f}us")
        out[name] = {"create_us": _median_us(make), "destroy_us": _median_us(destroy)}

    # the figures' read at the end (cpu.stat of the v2 directory; usage.py)
    cg = cgroups.create_cgroup(ContainerSpec(["true"]), layout)
    assert cg is not None
    reads: list[float] = []
    for _ in range(n):
        t0 = time.process_time()
        cg.counters()
        reads.append(time.process_time() - t0)
    anyio.run(cg.destroy)
    print(f"reading the figures at the end (Cgroup.counters): {_median_us(reads):.1f} us")
    out["counters_us"] = _median_us(reads)

    # the CPU time timer: a Watch and a heap entry per container, closed at its end
    fake = SimpleNamespace(spec=ContainerSpec(["true"], limits={"cpu_time": 2}), cgroup=None, struck=None)
    regs: list[float] = []

    async def register() -> None:
        for _ in range(n):
            t0 = time.process_time()
            enforce.watch(fake).close()  # type: ignore[arg-type]
            regs.append(time.process_time() - t0)

    anyio.run(register)
    print(f"the CPU/wall time timer's registration and close: {_median_us(regs):.1f} us")
    out["timer_us"] = _median_us(regs)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run (a few seconds)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    ap.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    ap.add_argument("--only", help="comma-separated configurations (default: all; 'none' is always run)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, cgroups)", file=sys.stderr)
        return 2
    rounds = args.rounds or (1 if args.quick else 3)
    base_n = {1: 20, 64: 128} if args.quick else {1: 200, 64: 800}
    names = list(CONFIGS)
    if args.only:
        wanted = set(args.only.split(",")) | {"none"}
        names = [n for n in names if n in wanted]
    layout = cgroups.current_layout()
    print(
        f"judge limits benchmark: {os.cpu_count()} CPUs, Linux {os.uname().release}, cgroups {layout.kind}, "
        f"{args.backend}; {rounds} round(s) of c=1: {base_n[1]}, c=64: {base_n[64]}"
    )
    cells = measure(names, rounds, base_n, args.backend)
    figures = report(cells)
    figures["supervisor"] = section_supervisor(60 if args.quick else 400)
    if args.json:
        data = {"rounds": rounds, "backend": args.backend, **figures}
        Path(args.json).write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
