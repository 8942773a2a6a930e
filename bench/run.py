"""Benchmark: mydocker's API against unshare(1), crun and runc, side by side in one run.

Run as root from the repository (about 2-3 minutes; ``--quick`` for a smoke run)::

    python bench/run.py            # or: python bench/run.py --quick --json out.json

What it measures, all interleaved (every round runs every runner at every concurrency,
in a rotated order, so drift of the machine hits all of them alike):

1. start-to-exit latency (median, p90) and throughput (containers/s) of a namespaced
   ``/bin/true`` (new PID, mount, UTS, IPC and network namespaces plus a fresh /proc)
   at concurrency 1, 8 and 64, for: ``run_container`` on asyncio and on trio;
   ``unshare --fork --pid --mount --uts --ipc --net --mount-proc /bin/true`` started
   with asyncio subprocesses; ``crun run`` and ``runc run`` of a minimal bundle where
   they are installed (else "not available: <reason>"). Ratios against unshare(1).
2. sequential spawn latency while the supervisor holds 1 GB of touched memory versus
   its ordinary ~20 MB (the spawn helper must keep it flat; a fork of the supervisor
   would not).
3. supervisor RSS and thread count with 1000 concurrent sleeping containers.

Every container is checked (exit status 0); a failure aborts the benchmark loudly
rather than producing a fast wrong number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from supervisor import DEVNULL, _linux, open_container, run_container

UNSHARE = ["unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--net", "--mount-proc", "/bin/true"]
CONCURRENCY = (1, 8, 64)


# ---------------------------------------------------------------- measurement


@dataclass
class Cell:
    """Samples of one runner at one concurrency, summed over rounds."""

    latencies: list[float] = field(default_factory=list)
    count: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def _batch(one: Callable[[], Awaitable[None]], n: int, concurrency: int, cell: Cell) -> None:
    """Run ``one()`` n times with ``concurrency`` workers; add latencies and rate to cell."""
    remaining = n
    lat: list[float] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            await one()
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    cell.seconds += time.perf_counter() - t0
    cell.count += n
    cell.latencies += lat


class Runner:
    """One way of starting a container; ``available`` is None or why not."""

    name = ""
    backend = "asyncio"
    weight = 1.0  # fraction of the batch size this runner gets (slow ones get fewer)
    available: str | None = None

    async def one(self) -> None:
        raise NotImplementedError

    async def warm(self) -> None:
        await self.one()

    def batch(self, n: int, concurrency: int, cell: Cell) -> None:
        async def main() -> None:
            await self.warm()
            await _batch(self.one, n, concurrency, cell)

        anyio.run(main, backend=self.backend)


class ApiRunner(Runner):
    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.name = f"mydocker {backend}"

    async def one(self) -> None:
        await run_container(["/bin/true"], stdout=DEVNULL, stderr=DEVNULL)

    async def warm(self) -> None:  # the helper starts with the event loop's first spawn
        for _ in range(3):
            await self.one()


def _use_pidfd_watcher() -> None:
    # Python 3.11's default child watcher spends a thread per subprocess; the pidfd one
    # is the fastest asyncio has, which is the fair baseline.
    if sys.version_info < (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(asyncio.get_running_loop())
            asyncio.set_child_watcher(watcher)


class ExecRunner(Runner):
    """A command-line runtime started with asyncio subprocesses."""

    def __init__(
        self,
        name: str,
        argv: Callable[[], list[str]],
        weight: float = 1.0,
        namespace: HiddenCgroup2 | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.weight = weight
        self.namespace = namespace

    def _entered(self) -> contextlib.AbstractContextManager[None]:
        return self.namespace.entered() if self.namespace is not None else contextlib.nullcontext()

    def batch(self, n: int, concurrency: int, cell: Cell) -> None:
        with self._entered():
            super().batch(n, concurrency, cell)

    async def one(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(
                f"{self.name} exited {proc.returncode}: {err.decode(errors='replace').strip()}"
            )

    async def warm(self) -> None:
        _use_pidfd_watcher()
        await self.one()

    def probe(self) -> None:
        """Run once; set ``available`` to the reason when that fails."""
        try:
            with self._entered():
                asyncio.run(self.warm())
        except (OSError, RuntimeError) as e:
            self.available = str(e).splitlines()[0][:200] if str(e) else type(e).__name__


# ---------------------------------------------------------------- OCI runtimes


def _copy_with_libs(binary: str, rootfs: Path) -> None:
    """Copy a dynamically linked binary and the libraries ldd lists into rootfs."""
    files = [binary]
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            files.append(path)
    for f in files:
        dest = rootfs / f.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)


def make_bundle(runtime: str, where: Path) -> Path:
    """A minimal OCI bundle running /bin/true: the same namespaces, only /proc mounted."""
    bundle = where / "bundle"
    rootfs = bundle / "rootfs"
    for d in ("proc", "dev", "sys", "tmp"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    _copy_with_libs(os.path.realpath("/bin/true"), rootfs)
    if not (rootfs / "bin/true").exists():
        (rootfs / "bin").mkdir(exist_ok=True)
        shutil.copy2("/bin/true", rootfs / "bin/true")
    subprocess.run([runtime, "spec"], cwd=bundle, check=True, capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config["mounts"] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        # a /dev of its own: without it concurrent containers race creating device
        # nodes in the one shared rootfs directory ("/dev/ptmx: File exists")
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
    ]
    config["linux"].pop("maskedPaths", None)
    config["linux"].pop("readonlyPaths", None)
    config["linux"]["namespaces"] = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


class HiddenCgroup2:
    """A mount namespace in which the cgroup2 hierarchy of a cgroup-hybrid host is
    unmounted, entered only while crun/runc run.

    crun refuses a hybrid host ("cgroups in hybrid mode not supported, drop all
    controllers from cgroupv2"); without the v2 mount it uses plain cgroup v1. The
    benchmark switches into this namespace (setns) for the OCI runtimes' batches and
    back for everything else, so mydocker keeps seeing the host as it is. The host
    is untouched.
    """

    def __init__(self) -> None:
        self.fd = -1
        self.note: str | None = None
        unified = "/sys/fs/cgroup/unified"
        with open("/proc/self/mountinfo") as f:
            if not any(line.split()[4] == unified for line in f):
                return
        if len(os.listdir("/proc/self/task")) != 1:
            self.note = "cannot hide cgroup2 from crun: setns needs a single-threaded process"
            return
        home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        cwd = os.getcwd()
        try:
            _linux.unshare(_linux.CLONE_NEWNS)
            _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
            _linux.umount(unified, _linux.MNT_DETACH)
            self.fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            self.note = f"crun/runc run in a mount namespace without {unified} (cgroup-hybrid host)"
        finally:
            _linux.setns(home, _linux.CLONE_NEWNS)
            os.close(home)
            os.chdir(cwd)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        if self.fd < 0:
            yield
            return
        home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        cwd = os.getcwd()
        _linux.setns(self.fd, _linux.CLONE_NEWNS)
        try:
            yield
        finally:
            _linux.setns(home, _linux.CLONE_NEWNS)
            os.close(home)
            os.chdir(cwd)


def oci_runner(runtime: str, tmp: Path, weight: float, hidden: HiddenCgroup2) -> ExecRunner:
    counter = iter(range(1 << 62))
    state = tmp / f"{runtime}-state"
    runner = ExecRunner(runtime, lambda: [], weight, hidden)
    exe = shutil.which(runtime)
    if exe is None:
        runner.available = f"{runtime} is not installed (apt-get install {runtime})"
        return runner
    try:
        bundle = make_bundle(exe, tmp / runtime)
    except (OSError, subprocess.CalledProcessError) as e:
        runner.available = f"cannot make a bundle: {e}"
        return runner
    tag = f"bench{os.getpid()}"
    runner.argv = lambda: [
        exe,
        "--root",
        str(state),
        "run",
        "--bundle",
        str(bundle),
        f"{tag}-{next(counter)}",
    ]
    runner.probe()
    return runner


# ---------------------------------------------------------------- sections


def fmt_ms(x: float) -> str:
    return f"{x * 1e3:6.2f}"


def section_latency(runners: list[Runner], rounds: int, base_n: dict[int, int]) -> dict[str, dict[int, Cell]]:
    cells: dict[str, dict[int, Cell]] = {r.name: {c: Cell() for c in CONCURRENCY} for r in runners}
    live = [r for r in runners if r.available is None]
    for rnd in range(rounds):
        for c in CONCURRENCY:
            k = (rnd + c) % len(live)
            for r in live[k:] + live[:k]:  # rotate who goes first
                if r.available is not None:
                    continue
                n = max(c, int(base_n[c] * r.weight))
                if isinstance(r, ExecRunner) and r.namespace is not None:
                    # an OCI runtime failing mid-run is reported, not fatal
                    try:
                        r.batch(n, c, cells[r.name][c])
                    except (OSError, RuntimeError, ExceptionGroup) as e:
                        while isinstance(e, ExceptionGroup):
                            e = e.exceptions[0]
                        r.available = f"failed during the run: {e}"[:200]
                else:
                    r.batch(n, c, cells[r.name][c])
        print(f"  round {rnd + 1}/{rounds} done", file=sys.stderr)
    return cells


def print_latency(runners: list[Runner], cells: dict[str, dict[int, Cell]]) -> dict[str, object]:
    print("\nstart-to-exit of a namespaced /bin/true (pid, mount, uts, ipc, net + fresh /proc)")
    head = "".join(f" | c={c:<3}  median    p90      /s" for c in CONCURRENCY)
    print(f"{'runner':18s}{head}")
    out: dict[str, object] = {}
    for r in runners:
        if r.available is not None:
            print(f"{r.name:18s} | not available: {r.available}")
            out[r.name] = {"available": r.available}
            continue
        row, rec = "", {}
        for c in CONCURRENCY:
            cell = cells[r.name][c]
            med, p90 = cell.quantile(0.5), cell.quantile(0.9)
            row += f" |  {fmt_ms(med)} ms {fmt_ms(p90)} ms {cell.rate:6.0f}"
            rec[c] = {"median_ms": med * 1e3, "p90_ms": p90 * 1e3, "per_s": cell.rate, "n": cell.count}
        print(f"{r.name:18s}{row}")
        out[r.name] = rec
    base = cells.get("unshare(1)")
    if base is not None:
        print("\nratios against unshare(1) via asyncio (latency: lower is better; throughput: higher)")
        for r in runners:
            if r.available is not None or r.name == "unshare(1)":
                continue
            parts = []
            for c in CONCURRENCY:
                mine, theirs = cells[r.name][c], base[c]
                parts.append(
                    f"c={c}: latency {mine.quantile(0.5) / theirs.quantile(0.5):4.2f}x"
                    f" throughput {mine.rate / theirs.rate:4.2f}x"
                )
            print(f"  {r.name:16s} " + ";  ".join(parts))
        crun = cells.get("crun")
        crun_ok = next((r for r in runners if r.name == "crun" and r.available is None), None)
        if crun_ok is not None and crun is not None:
            for r in runners:
                if r.name.startswith("mydocker"):
                    ratio = cells[r.name][64].rate / crun[64].rate
                    print(f"  {r.name:16s} throughput at c=64 vs crun: {ratio:4.2f}x")
    return out


def _rss_threads() -> tuple[int, int]:
    rss = threads = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


class DirectCloneRunner(ApiRunner):
    """``run_container`` with the clone done in this process (the CLI's path): a
    fork-style clone whose cost grows with the supervisor's size. Compared with the
    helper at the same size it also shows what the round trip to the helper costs."""

    def __init__(self) -> None:
        super().__init__("asyncio")
        self.name = "in-process clone"

    def batch(self, n: int, concurrency: int, cell: Cell) -> None:
        from supervisor.spawn import prefer_direct_clone

        prefer_direct_clone(True)
        try:
            super().batch(n, concurrency, cell)
        finally:
            prefer_direct_clone(False)


def section_big_supervisor(rounds: int, n: int, big_mb: int) -> dict[str, object]:
    """Sequential spawn latency with the supervisor at its own size vs holding big_mb,
    through the spawn helper and, for comparison, cloning in-process."""
    runners: list[Runner] = [ApiRunner("asyncio"), DirectCloneRunner()]
    cells = {(r.name, size): Cell() for r in runners for size in ("small", "big")}
    rss = {"small": 0, "big": 0}
    if len(os.listdir("/proc/self/task")) != 1:
        runners = runners[:1]  # the in-process path needs a single-threaded process
    for _ in range(rounds):
        gc.collect()
        rss["small"] = _rss_threads()[0]
        for r in runners:
            r.batch(n, 1, cells[r.name, "small"])
        ballast = bytearray(big_mb << 20)
        ballast[::4096] = b"\1" * len(range(0, len(ballast), 4096))  # touch every page
        rss["big"] = _rss_threads()[0]
        for r in runners:
            r.batch(n, 1, cells[r.name, "big"])
        del ballast
    print("\nsequential start-to-exit latency by supervisor size (asyncio):")
    out: dict[str, object] = {"small_rss_mb": rss["small"] >> 20, "big_rss_mb": rss["big"] >> 20}
    for r in runners:
        small, big = cells[r.name, "small"], cells[r.name, "big"]
        ratio = big.quantile(0.5) / small.quantile(0.5)
        print(
            f"  {r.name:18s} RSS {rss['small'] >> 20:4d} MB: {fmt_ms(small.quantile(0.5))} ms"
            f" (p90 {fmt_ms(small.quantile(0.9))});  RSS {rss['big'] >> 20:4d} MB:"
            f" {fmt_ms(big.quantile(0.5))} ms (p90 {fmt_ms(big.quantile(0.9))});  ratio {ratio:4.2f}x"
        )
        out[r.name] = {
            "small_median_ms": small.quantile(0.5) * 1e3,
            "big_median_ms": big.quantile(0.5) * 1e3,
            "ratio": ratio,
        }
    return out


def section_helpers(rounds: int, n_seq: int, n_par: int) -> dict[str, object]:
    """One spawn helper per event loop (the design) against one per CPU, round-robin.

    The helper is single-threaded, so it serialises clones; this measures whether a
    second one would pay. It swaps the spawner ``start_container`` looks up, which
    only a benchmark should do.
    """
    import itertools

    import supervisor.container as container_mod
    from supervisor.spawn import SpawnHelper, get_helper

    ncpu = os.cpu_count() or 1
    cells = {(k, c): Cell() for k in ("1 helper", f"{ncpu} helpers") for c in (1, 64)}

    async def main() -> None:
        await run_container(["/bin/true"])
        extra = [SpawnHelper() for _ in range(ncpu - 1)]
        pool = itertools.cycle([get_helper(), *extra])
        choices = {"1 helper": get_helper, f"{ncpu} helpers": lambda: next(pool)}
        original = container_mod.get_spawner
        try:
            for _ in range(rounds):
                for key, pick in choices.items():
                    container_mod.get_spawner = pick
                    one = ApiRunner("asyncio").one
                    await _batch(one, n_seq, 1, cells[key, 1])
                    await _batch(one, n_par, 64, cells[key, 64])
        finally:
            container_mod.get_spawner = original
            for h in extra:
                h.close()

    anyio.run(main)
    print("\nspawn helpers (asyncio): one per event loop vs one per CPU")
    out: dict[str, object] = {}
    for key in ("1 helper", f"{ncpu} helpers"):
        seq, par = cells[key, 1], cells[key, 64]
        print(f"  {key:10s} c=1 median {fmt_ms(seq.quantile(0.5))} ms;  c=64 {par.rate:6.0f}/s")
        out[key] = {"c1_median_ms": seq.quantile(0.5) * 1e3, "c64_per_s": par.rate}
    return out


def section_rss(count: int, backend: str) -> dict[str, object]:
    """Supervisor RSS and threads with ``count`` concurrent sleeping containers."""
    result: dict[str, object] = {}

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            # warm up (helper, imports, first-use allocations) before the baseline
            c = await open_container(["sleep", "1000"], stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
            await c.aclose()
            gc.collect()
            rss0, threads0 = _rss_threads()
            fds0 = len(os.listdir("/proc/self/fd"))
            containers = []
            limiter = anyio.Semaphore(64)

            async def start() -> None:
                async with limiter:
                    containers.append(
                        await open_container(["sleep", "1000"], stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
                    )

            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(start)
            for c in containers:
                stack.push_async_callback(c.aclose)
            gc.collect()
            rss1, threads1 = _rss_threads()
            fds1 = len(os.listdir("/proc/self/fd"))
            alive = sum(1 for c in containers if c.returncode is None)
            result.update(
                containers=alive,
                rss0_mb=rss0 / 2**20,
                rss1_mb=rss1 / 2**20,
                per_container_kb=(rss1 - rss0) / count / 1024,
                threads_before=threads0,
                threads_after=threads1,
                fds_per_container=(fds1 - fds0) / count,
            )
            # close concurrently: the default exit stack would stop them one by one
            async with anyio.create_task_group() as tg:
                for c in containers:
                    tg.start_soon(c.aclose)

    anyio.run(main, backend=backend)
    print(
        f"\n{count} concurrent sleeping containers ({backend}): supervisor RSS {result['rss0_mb']:.1f} MB ->"
        f" {result['rss1_mb']:.1f} MB = {result['per_container_kb']:.1f} kB per container;"
        f" threads {result['threads_before']} -> {result['threads_after']};"
        f" fds per container {result['fds_per_container']:.1f}"
    )
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run for CI (a few seconds)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--no-oci", action="store_true", help="skip crun and runc")
    ap.add_argument(
        "--sections",
        default="latency,big,helpers,rss",
        help="comma-separated subset of: latency, big (1 GB supervisor), helpers (one vs one per CPU),"
        " rss (default: all)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (namespaces)", file=sys.stderr)
        return 2
    rounds = args.rounds or (1 if args.quick else 3)
    base_n = {1: 20, 8: 40, 64: 128} if args.quick else {1: 250, 8: 500, 64: 1000}
    py = sys.version.split()[0]
    print(f"mydocker benchmark: {os.cpu_count()} CPUs, Linux {os.uname().release}, Python {py}")
    report: dict[str, object] = {"quick": args.quick, "rounds": rounds, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="mydocker-bench-") as tmpdir:
        tmp = Path(tmpdir)
        runners: list[Runner] = [ApiRunner("asyncio"), ApiRunner("trio")]
        un = ExecRunner("unshare(1)", lambda: UNSHARE)
        if shutil.which("unshare") is None:
            un.available = "unshare(1) is not installed (util-linux)"
        else:
            un.probe()
        runners.append(un)
        if not args.no_oci:
            hidden = HiddenCgroup2()
            if hidden.note:
                print(f"note: {hidden.note}")
            runners.append(oci_runner("crun", tmp, 0.5, hidden))
            runners.append(oci_runner("runc", tmp, 0.1, hidden))
        print(
            f"interleaved: {rounds} round(s); per round and runner: "
            + ", ".join(f"c={c}: {n}" for c, n in base_n.items())
        )
        sections = set(args.sections.split(","))
        if "latency" in sections:
            cells = section_latency(runners, rounds, base_n)
            report["latency"] = print_latency(runners, cells)
        if "big" in sections:
            report["big_supervisor"] = section_big_supervisor(
                1 if args.quick else 3, 30 if args.quick else 150, 256 if args.quick else 1024
            )
        if "helpers" in sections:
            report["helpers"] = section_helpers(
                1 if args.quick else 3, 30 if args.quick else 150, 128 if args.quick else 600
            )
        if "rss" in sections:
            count = 100 if args.quick else 1000
            report["rss"] = {b: section_rss(count, b) for b in ("asyncio", "trio")}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
