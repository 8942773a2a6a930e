"""Container start: mydocker's run_container against unshare(1), crun and runc, side by side.

Run as root from a clone (``--quick`` for a smoke run)::

    .venv/bin/python bench/start.py [--quick] [--rounds N] [--json FILE]

Start-to-exit latency of one container running ``/bin/true`` at concurrency 1
(median, p90) and throughput at concurrency 64 (containers per second, 64 started
at once, each replaced as it ends), interleaved (``common.interleave``), each
runtime with its default confinement:

- on the host's root: ``run_container(["/bin/true"])`` on asyncio and on trio,
  against ``unshare -fpmuin --mount-proc /bin/true`` started by asyncio with the
  same concurrency (the same namespaces but the cgroup one, no confinement, no
  cgroup);
- on a busybox root filesystem: ``run_container(..., rootfs=BUSYBOX)`` on asyncio and
  trio, and on asyncio without a cgroup, against crun and runc running a bundle of
  the same tree (``ocibundle.py`` says exactly what differs), each with its own default
  confinement and with docker's.

Then two design checks of the spawn helper (asyncio, host root):

- sequential latency with a supervisor of its ordinary size and holding 1 GB of
  touched memory, through the helper and cloning in-process (``prefer_direct_clone``,
  the CLI's path): the reason the helper exists;
- one spawn helper per event loop (the design) against one per CPU, round-robin.

Each mydocker runner's table row says how it cloned (``common.spawn_helpers``).
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
from pathlib import Path
from typing import Any

import common
import ocibundle as oci
from common import ApiRunner, Bench, CommandRunner, Results, Runner, ms, per_s, table, times

from supervisor import spawn
from supervisor._linux import ALL_CAPS

ROOTFS_RUNNERS = ("crun", "runc")


def start_runners(bench: Bench, rootfs: str, hidden: oci.HiddenCgroup2) -> tuple[list[Runner], list[Runner]]:
    """The host-root group and the root-filesystem group."""
    opts = bench.options
    host: list[Runner] = [
        ApiRunner("mydocker, asyncio", "asyncio", **opts),
        ApiRunner("mydocker, trio", "trio", **opts),
        CommandRunner("unshare(1)", lambda: [*common.UNSHARE, "/bin/true"]).probe(),
    ]
    on_rootfs: list[Runner] = [
        ApiRunner("mydocker --rootfs, asyncio", "asyncio", rootfs=rootfs, **opts),
        ApiRunner("mydocker --rootfs, trio", "trio", rootfs=rootfs, **opts),
        ApiRunner("mydocker --rootfs, asyncio, no cgroup", "asyncio", rootfs=rootfs, cgroup=False),
    ]
    for runtime in ROOTFS_RUNNERS:
        for confinement in oci.CONFINEMENTS:
            weight = 0.5 if runtime == "crun" else 0.25
            on_rootfs.append(oci.oci_runner(runtime, confinement, bench.tmp, Path(rootfs), hidden, weight))
    return host, on_rootfs


def report_group(
    title: str, runners: list[Runner], results: Results, base: str, others: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One table: latency and throughput, and ratios against ``base`` (and ``others``)."""
    rows, out = [], {}
    refs = [base, *others]
    headers = ["runner", "spawn path", "c=1 median", "c=1 p90", "c=64"]
    headers += [f"vs {ref}: c=1, c=64" for ref in refs]
    for r in runners:
        if r.available is not None:
            rows.append([r.name, "-", f"not available: {r.available}", "", "", *([""] * len(refs))])
            out[r.name] = {"available": r.available}
            continue
        row = common.figures_row(results, r)
        rows.append(row + [common.ratio_cell(results, r.name, ref) for ref in refs])
    print(table(title, headers, rows))
    out.update(results.to_json())
    return out


def section_start(bench: Bench, rounds: int, quick: bool) -> dict[str, Any]:
    common.ensure_tools()
    rootfs = str(common.busybox_rootfs(bench.tmp))
    hidden = oci.HiddenCgroup2()
    bench.cleanup(hidden.close)
    if hidden.note:
        print(f"note: {hidden.note}")
    host, on_rootfs = start_runners(bench, rootfs, hidden)
    sizes = common.QUICK_SIZES if quick else common.SIZES
    print(
        f"interleaved: {rounds} round(s); per round and runner: c=1: {sizes[1]}, c=64: {sizes[64]} containers"
    )
    # each group interleaved on its own (confinement.py says why)
    results = common.interleave(host, rounds, sizes)
    common.interleave(on_rootfs, rounds, sizes, results)
    print(
        "\nmedians over rounds; 'vs X: c=1, c=64': the median of each round's ratio of c=1 latency (lower"
        " is better) and of c=64 throughput (higher is better). crun runs without a cgroup, runc with v1"
        " cgroups; (spec): their own default confinement, (docker): docker's (ocibundle.py)"
    )
    figures = {
        "host_root": report_group("/bin/true on the host's root", host, results, "unshare(1)"),
        "rootfs": report_group(
            "/bin/true on a busybox root filesystem",
            on_rootfs,
            results,
            "crun (docker)",
            ("runc (docker)",),
        ),
    }
    mine = "mydocker --rootfs, asyncio, no cgroup"
    crun = "crun (docker)"
    if results.has(crun, 1):
        print(
            f"\nequal work (busybox root, docker's confinement, no cgroup): mydocker vs crun:"
            f" c=1 latency {times(results.ratio(mine, crun, 1, 'median'))},"
            f" c=64 throughput {times(results.ratio(mine, crun, 64, 'rate'))}"
        )
    return figures


# ---------------------------------------------------------------- the spawn helper's design


class DirectRunner(ApiRunner):
    """``run_container`` cloning in this process (``prefer_direct_clone``: the CLI's
    path), a fork-style clone whose cost grows with the supervisor's size."""

    def batch(self, n: int, concurrency: int) -> common.Samples:
        spawn.prefer_direct_clone(True)
        try:
            return super().batch(n, concurrency)
        finally:
            spawn.prefer_direct_clone(False)


def section_big_supervisor(bench: Bench, rounds: int, n: int, big_mb: int) -> dict[str, Any]:
    """Sequential latency with the supervisor at its own size and holding ``big_mb``."""
    runners: list[Runner] = [ApiRunner("spawn helper", **bench.options)]
    if len(os.listdir("/proc/self/task")) == 1:  # the in-process clone needs one thread
        runners.append(DirectRunner("in-process clone", **bench.options))
    results, rss = Results(), {"small": 0, "big": 0}
    for rnd in range(rounds):
        for size in ("small", "big"):
            ballast = bytearray(big_mb << 20) if size == "big" else bytearray()
            ballast[::4096] = b"\1" * len(range(0, len(ballast), 4096))  # touch every page
            gc.collect()
            rss[size] = common.rss_kb() >> 10
            order = runners if rnd % 2 == 0 else runners[::-1]
            for r in order:
                results.add(f"{r.name} {size}", 1, rnd, r.batch(n, 1))
            del ballast
    rows, out = [], {}
    for r in runners:
        small, big = (results.value(f"{r.name} {s}", 1, "median") for s in ("small", "big"))
        ratio = results.ratio(f"{r.name} big", f"{r.name} small", 1, "median")
        rows.append([r.name, ms(small), ms(big), times(ratio)])
        out[r.name] = {"small_median_ms": small * 1e3, "big_median_ms": big * 1e3, "ratio": ratio}
    print(
        table(
            "sequential latency by supervisor size (asyncio, host root; supervisor RSS"
            f" {rss['small']} MB vs {rss['big']} MB)",
            ["clone", f"{rss['small']} MB supervisor", f"{rss['big']} MB supervisor", "ratio"],
            rows,
        )
    )
    return {"rss_mb": rss, **out}


class HelperPoolRunner(ApiRunner):
    """``run_container`` whose clones go round-robin to ``count`` spawn helpers of
    the confinement's base program instead of one (``spawn.get_helper`` swapped for
    the batch: only a benchmark should do that)."""

    def __init__(self, name: str, count: int, **options: Any) -> None:
        super().__init__(name, **options)
        self.count = count

    def batch(self, n: int, concurrency: int) -> common.Samples:
        real = spawn.get_helper
        pools: dict[tuple[bytes | None, int], Any] = {}
        made: list[spawn.SpawnHelper] = []

        def get_helper(base: bytes | None = None, bounding: int = ALL_CAPS) -> spawn.SpawnHelper | None:
            first = real(base, bounding)
            if first is None:
                return None
            if (base, bounding) not in pools:
                extra = [spawn.SpawnHelper(base, bounding) for _ in range(self.count - 1)]
                made.extend(extra)
                pools[base, bounding] = itertools.cycle([first, *extra])
            return next(pools[base, bounding])

        spawn.get_helper = get_helper
        try:
            return super().batch(n, concurrency)
        finally:
            spawn.get_helper = real
            for h in made:
                h.close()


def section_helpers(bench: Bench, rounds: int, sizes: dict[int, int]) -> dict[str, Any]:
    ncpu = os.cpu_count() or 1
    runners: list[Runner] = [
        ApiRunner("1 helper per event loop", **bench.options),
        HelperPoolRunner(f"{ncpu} helpers per event loop", ncpu, **bench.options),
    ]
    results = common.interleave(runners, rounds, sizes)
    base = runners[0].name
    rows = [
        [
            r.name,
            ms(results.value(r.name, 1, "median")),
            per_s(results.value(r.name, 64, "rate")),
            times(results.ratio(r.name, base, 64, "rate")),
        ]
        for r in runners
    ]
    print(
        table(
            "spawn helpers (asyncio, host root)", ["helpers", "c=1 median", "c=64", "c=64 vs 1 helper"], rows
        )
    )
    return results.to_json()


def main() -> int:
    parser = common.arguments(__doc__)
    parser.add_argument(
        "--sections",
        default="start,big,helpers",
        help="comma-separated: start, big (1 GB supervisor), helpers (one vs one per CPU)",
    )
    args = parser.parse_args()
    rounds = common.rounds_of(args)
    sections = set(args.sections.split(","))
    figures: dict[str, Any] = {"machine": common.machine(), "rounds": rounds}
    with Bench("bench/start.py") as bench:
        print(f"bench/start.py: {common.machine()}")
        if "start" in sections:
            figures["start"] = section_start(bench, rounds, args.quick)
        if "big" in sections:
            n, mb = (20, 256) if args.quick else (60, 1024)
            figures["big_supervisor"] = section_big_supervisor(bench, rounds, n, mb)
        if "helpers" in sections:
            sizes = common.sizes_of(args)
            figures["helpers"] = section_helpers(bench, rounds, sizes)
    common.write_json(args.json, figures)
    return 1 if bench.leaks else 0


if __name__ == "__main__":
    sys.exit(main())
