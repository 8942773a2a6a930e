"""What every bench shares: runners, interleaved rounds, medians of rounds, tables, and
a run that leaves nothing behind.

A *runner* is one way of doing a unit of work (start a container, exec into one,
run a command-line tool). ``interleave`` runs every runner at every concurrency in
each round, in an order rotated from round to round, so that drift of a shared
machine (other work starting or stopping) hits all of them alike. Every figure
printed is the median over rounds of that round's figure; every ratio is the median
over rounds of the ratio *within* a round, so two runners are only ever compared on
numbers taken side by side.

``Bench`` is the run's environment: root checked, a state directory and a cgroup
parent of its own under /tmp and below the bench's own cgroup (nobody else's
containers or sweeps are touched), orphans reparented to the bench (a child
subreaper), and at the end a check that no process, mount, cgroup or container
directory was left behind, which makes the bench fail if one was.

Every unit of work is checked (exit status 0): a failure stops the bench loudly
rather than producing a fast wrong number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import anyio  # noqa: E402

from supervisor import DEVNULL, ContainerSpec, run_container  # noqa: E402

#: the namespaces unshare(1) makes, as mydocker does (mydocker adds a cgroup namespace)
UNSHARE = ["unshare", "-fpmuin", "--mount-proc"]
#: rounds of a full run, and the batches of each runner in a round ({concurrency: units
#: of work}): many short rounds pair the runners' figures more closely in time than a
#: few long ones, on a machine whose load changes from minute to minute
ROUNDS = 8
SIZES = {1: 60, 64: 384}
QUICK_SIZES = {1: 10, 64: 64}
#: the Debian packages the benches use, installed by ``scripts/debian-deps.sh bench``
TOOLS = ("unshare", "nsenter", "setpriv", "crun", "runc", "busybox", "ip")


# ---------------------------------------------------------------- samples


@dataclass
class Samples:
    """One runner's batch at one concurrency in one round."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Units of work per second over the batch (throughput)."""
        return len(self.latencies) / self.seconds if self.seconds else float("nan")

    def quantile(self, q: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    @property
    def p90(self) -> float:
        return self.quantile(0.9)


METRICS: dict[str, Callable[[Samples], float]] = {
    "median": lambda s: s.median,
    "p90": lambda s: s.p90,
    "rate": lambda s: s.rate,
}


class Results:
    """Samples by (runner name, concurrency, round)."""

    def __init__(self) -> None:
        self.samples: dict[tuple[str, int], dict[int, Samples]] = {}

    def add(self, name: str, concurrency: int, rnd: int, samples: Samples) -> None:
        self.samples.setdefault((name, concurrency), {})[rnd] = samples

    def has(self, name: str, concurrency: int) -> bool:
        return bool(self.samples.get((name, concurrency)))

    def value(self, name: str, concurrency: int, metric: str) -> float:
        """The median over rounds of ``metric`` (median, p90 or rate)."""
        rounds = self.samples.get((name, concurrency), {})
        values = [METRICS[metric](s) for s in rounds.values()]
        return statistics.median(values) if values else float("nan")

    def ratio(self, a: str, b: str, concurrency: int, metric: str) -> float:
        """The median over rounds of a's ``metric`` over b's, in the same round."""
        ra, rb = self.samples.get((a, concurrency), {}), self.samples.get((b, concurrency), {})
        f = METRICS[metric]
        values = [f(ra[k]) / f(rb[k]) for k in ra.keys() & rb.keys()]
        return statistics.median(values) if values else float("nan")

    def difference(self, a: str, b: str, concurrency: int, metric: str) -> float:
        """The median over rounds of a's ``metric`` minus b's, in the same round."""
        ra, rb = self.samples.get((a, concurrency), {}), self.samples.get((b, concurrency), {})
        f = METRICS[metric]
        values = [f(ra[k]) - f(rb[k]) for k in ra.keys() & rb.keys()]
        return statistics.median(values) if values else float("nan")

    def spread(self, name: str, concurrency: int, metric: str) -> tuple[float, float]:
        """The lowest and highest round's ``metric``."""
        values = [METRICS[metric](s) for s in self.samples.get((name, concurrency), {}).values()]
        return (min(values), max(values)) if values else (float("nan"), float("nan"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (name, c), rounds in self.samples.items():
            out.setdefault(name, {})[f"c={c}"] = {
                "median_ms": self.value(name, c, "median") * 1e3,
                "p90_ms": self.value(name, c, "p90") * 1e3,
                "per_s": self.value(name, c, "rate"),
                "rounds": [
                    {
                        "median_ms": s.median * 1e3,
                        "p90_ms": s.p90 * 1e3,
                        "per_s": s.rate,
                        "n": len(s.latencies),
                    }
                    for _, s in sorted(rounds.items())
                ],
            }
        return out


async def drive(one: Callable[[], Any], n: int, concurrency: int) -> Samples:
    """Run ``await one()`` n times, ``concurrency`` at a time; time each and the whole."""
    remaining = n
    samples = Samples()

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            await one()
            samples.latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    samples.seconds = time.perf_counter() - t0
    return samples


# ---------------------------------------------------------------- runners


class Runner:
    """One way of doing the unit of work. ``batch`` runs a fresh event loop: set up
    (``session``), warm up (``warm``), then the timed batch; ``path`` is then how
    mydocker cloned (``spawn_helpers``), for runners that use it.

    Attributes:
        available: None, or why this runner cannot run here (it is then reported,
            not measured).
        optional: a failure during the run makes it unavailable instead of stopping
            the bench (other programs' runtimes).
        weight: the fraction of the batch size it gets (slow runners get fewer).
    """

    name = ""
    backend = "asyncio"
    weight = 1.0
    optional = False
    available: str | None = None
    #: the kinds of spawn helper seen after its batches, and the most network
    #: namespaces one of them held ready (``spawn_helpers``)
    helper_kinds: frozenset[str] = frozenset()
    pooled_netns = 0

    @property
    def path(self) -> str:
        """How mydocker cloned its containers ("-": mydocker did not)."""
        if not self.helper_kinds:
            return "-"
        return f"{'+'.join(sorted(self.helper_kinds))}, netns pool {self.pooled_netns}"

    async def one(self) -> None:
        raise NotImplementedError

    def session(self) -> contextlib.AbstractAsyncContextManager[object]:
        """What a batch runs inside (e.g. a container to exec into)."""
        return contextlib.nullcontext()

    async def warm(self) -> None:
        # the first containers of an event loop start its spawn helper
        for _ in range(3):
            await self.one()

    def batch(self, n: int, concurrency: int) -> Samples:
        result = Samples()

        async def main() -> None:
            nonlocal result
            async with self.session():
                await self.warm()
                result = await drive(self.one, n, concurrency)
                for kind, pool in spawn_helpers():
                    self.helper_kinds |= {kind}
                    self.pooled_netns = max(self.pooled_netns, pool)

        anyio.run(main, backend=self.backend)
        return result


def check_status(what: str, status: int) -> None:
    if status != 0:
        raise RuntimeError(f"{what}: exit status {status}")


class ApiRunner(Runner):
    """``run_container(["/bin/true"], **options)`` on one anyio backend.

    ``cgroup=False``: no cgroup at all (``start_container``'s ``cgroup_factory``, no
    device program either), to measure what the cgroup costs. ``netns_pool=False``:
    its spawn helpers keep no network namespaces ready (``without_netns_pool``).
    """

    def __init__(
        self,
        name: str,
        backend: str = "asyncio",
        *,
        command: Sequence[str] = ("/bin/true",),
        cgroup: bool = True,
        netns_pool: bool = True,
        **options: Any,
    ) -> None:
        self.name = name
        self.backend = backend
        self.command = tuple(command)
        self.cgroup = cgroup
        self.netns_pool = netns_pool
        self.options = options

    async def one(self) -> None:
        if self.cgroup:
            await run_container(self.command, stdout=DEVNULL, stderr=DEVNULL, check=True, **self.options)
            return
        from supervisor.container import start_container

        spec = ContainerSpec(command=self.command, **self.options)
        container = await start_container(
            spec, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL, cgroup_factory=lambda _spec: None
        )
        async with container:
            check_status(self.name, await container.wait())

    async def warm(self) -> None:
        with contextlib.nullcontext() if self.netns_pool else without_netns_pool():
            await super().warm()


def use_pidfd_watcher() -> None:
    """Python 3.11's default child watcher spends a thread per subprocess; the pidfd
    one is the fastest asyncio has, which is the fair baseline for other programs."""
    if sys.version_info < (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(asyncio.get_running_loop())
            asyncio.set_child_watcher(watcher)


async def run_command(argv: Sequence[str], stdin: bytes | None = None) -> bytes:
    """Run a program with asyncio's subprocesses; its stdout, or RuntimeError."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {why[-1] if why else ''}"[:300])
    return out


class CommandRunner(Runner):
    """Another program (unshare, crun, runc, nsenter), started with asyncio's
    subprocesses: ``argv()`` gives each run's command line. ``namespace``: a context
    manager the batches run in (``ocibundle.HiddenCgroup2.entered``)."""

    def __init__(
        self,
        name: str,
        argv: Callable[[], Sequence[str]],
        *,
        weight: float = 1.0,
        optional: bool = False,
        namespace: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.weight = weight
        self.optional = optional
        self.namespace = namespace or contextlib.nullcontext

    @property
    def path(self) -> str:
        return "-"  # not mydocker's: whatever helpers a session made are not its

    async def one(self) -> None:
        await run_command(self.argv())

    async def warm(self) -> None:
        use_pidfd_watcher()
        await self.one()

    def batch(self, n: int, concurrency: int) -> Samples:
        with self.namespace():
            return super().batch(n, concurrency)

    def probe(self) -> CommandRunner:
        """Run it once; if that fails, it is unavailable (with the reason)."""
        if self.available is None:
            try:
                with self.namespace():
                    asyncio.run(self.warm())
            except (OSError, RuntimeError) as e:
                self.available = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        return self


def first_error(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


def interleave(
    runners: Sequence[Runner], rounds: int, sizes: dict[int, int], results: Results | None = None
) -> Results:
    """Run every available runner at every concurrency in ``sizes`` ({concurrency:
    batch size}) once per round, rotating who goes first, and every other round in
    the reverse order: each runner then follows each of its neighbours as often. (In
    one fixed cycle a runner would always follow the same one, and pay, every round,
    for whatever that one leaves behind: deferred frees, a disk's discards.)"""
    results = Results() if results is None else results
    for rnd in range(rounds):
        t0 = time.monotonic()
        for ci, (c, n) in enumerate(sizes.items()):
            live = [r for r in runners if r.available is None]
            if not live:
                break
            k = (rnd + ci) % len(live)
            order = live[k:] + live[:k]
            if rnd % 2:
                order.reverse()
            for r in order:
                try:
                    samples = r.batch(max(c, round(n * r.weight)), c)
                except Exception as e:
                    if not r.optional:
                        raise
                    r.available = f"failed during the run: {first_error(e)}"[:200]
                    continue
                results.add(r.name, c, rnd, samples)
        print(f"  round {rnd + 1}/{rounds} done ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return results


# ---------------------------------------------------------------- mydocker's spawn path


def spawn_helpers() -> list[tuple[str, int]]:
    """The spawn helpers of the running event loop, each as ("zygote" or "helper",
    the network namespaces it holds ready). A zygote is a helper that loaded its
    confinement's base seccomp program once for all its children
    (``spawn.get_helper``); a plain helper's children load their filter whole; the
    pool is ``helper._NetnsPool``. Read from /proc: looking changes nothing."""
    from supervisor import spawn

    out = []
    for h in spawn.helpers():
        kind = "zygote" if seccomp_mode(h.pid) == "2" else "helper"
        out.append((kind, _netns_held(h.pid)))
    return out


def _proc_status(pid: int | str) -> dict[str, str]:
    out = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def seccomp_mode(pid: int | str) -> str:
    """0 none, 1 strict, 2 a filter (``Seccomp`` in /proc/PID/status)."""
    return _proc_status(pid).get("Seccomp", "")


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A process's resident memory in kB: ``VmRSS`` (all of it) or ``RssAnon``
    (its own anonymous pages, without the shared files it maps)."""
    return int(_proc_status(pid).get(field, "0 kB").split()[0])


def _netns_held(pid: int) -> int:
    """The network namespaces other than its own that a process holds fds of."""
    try:
        own = os.readlink(f"/proc/{pid}/ns/net")
        links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return 0
    return sum(1 for link in links if link.startswith("net:[") and link != own)


@contextlib.contextmanager
def without_netns_pool() -> Iterator[None]:
    """Spawn helpers started meanwhile keep no network namespaces ready (the pool
    they fill while idle, ``helper._NetnsPool``): to measure what the pool buys. It
    rewrites the one line spawn.py starts a helper with; ``spawn_helpers`` shows, from
    the helper's open fds, that the pool is indeed empty."""
    from supervisor import spawn

    real = spawn.subprocess
    entry = "from supervisor.helper import helper_main;"

    class NoPool:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def Popen(args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
            if entry not in args[-1]:
                raise RuntimeError("spawn.py starts its helper another way: update bench/common.py")
            code = args[-1].replace(entry, f"import supervisor.helper as h; h._NetnsPool.SIZE = 0; {entry}")
            return real.Popen([*args[:-1], code], **kw)

    spawn.subprocess = NoPool()  # type: ignore[assignment]
    try:
        yield
    finally:
        spawn.subprocess = real


# ---------------------------------------------------------------- the run's environment


def children_of(pid: int) -> set[int]:
    """Every process whose parent is ``pid`` (zombies included)."""
    me, out = str(pid), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        out.add(int(entry))
            except (OSError, IndexError):
                pass
    return out


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(" ".join(line.split()[3:5]) for line in f)


PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


class Bench:
    """A bench's run, as a context manager (see the module's docstring).

    Attributes:
        tmp: a directory of the run's own under /tmp (removed at the end).
        state_dir: mydocker's state directory for the run (also in
            ``$MYDOCKER_STATE_DIR``, for the CLI).
        cgroup_parent: the cgroup (relative to the bench's own) its containers'
            cgroups go below, or None where mydocker makes none (no cgroup v2).
        leaks: what was left behind (filled at the end).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.leaks: list[str] = []
        self.cgroup_parent: str | None = None
        self._cgroup_dir: str | None = None
        self._cleanups: list[Callable[[], None]] = []

    def __enter__(self) -> Bench:
        if os.geteuid() != 0:
            raise SystemExit(f"{self.name}: needs root (namespaces, cgroups)")
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.tmp = Path(tempfile.mkdtemp(prefix="mydocker-bench-", dir="/tmp"))
        os.chmod(self.tmp, 0o755)  # a rootless worker reaches its files through it
        self.state_dir = self.tmp / "state"
        self.state_dir.mkdir()
        os.environ["MYDOCKER_STATE_DIR"] = str(self.state_dir)
        self._make_cgroup_parent()
        self._mounts = _mounts()
        self._children = children_of(os.getpid())
        return self

    def _make_cgroup_parent(self) -> None:
        from supervisor import cgroups

        v2 = cgroups.current_layout().v2
        own = v2.parent_dir(None) if v2 is not None else None
        if own is None or not os.access(own, os.W_OK):
            return
        # Not named mydocker-*: that is the prefix mydocker's sweeps look at.
        name = f"bench-{os.getpid()}-{os.urandom(3).hex()}"
        os.mkdir(os.path.join(own, name))
        self._cgroup_dir, self.cgroup_parent = os.path.join(own, name), name

    @property
    def options(self) -> dict[str, Any]:
        """The ``ContainerSpec`` fields every container of the bench gets."""
        return {"cgroup_parent": self.cgroup_parent} if self.cgroup_parent else {}

    def cleanup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` at the end, before the check (last registered, first run)."""
        self._cleanups.append(fn)

    def __exit__(self, *exc: object) -> None:
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - every cleanup runs; the check says what stayed
                self.leaks.append(f"cleanup {getattr(fn, '__name__', fn)} failed: {e}")
        self._check()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if exc[0] is None:
            left = "; ".join(self.leaks) if self.leaks else "nothing"
            print(f"\n{self.name}: left behind: {left} (load average {os.getloadavg()[0]:.1f} at the end)")

    def _check(self) -> None:
        """Record and remove whatever the run left: our child processes (orphans
        included: we are their subreaper), cgroups below our parent, mounts, and
        containers' directories in the state directory."""
        deadline = time.monotonic() + 5
        while children_of(os.getpid()) - self._children and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in children_of(os.getpid()) - self._children:
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                self.leaks.append(f"process {pid} ({cmd or 'a zombie'})")
                os.kill(pid, signal.SIGKILL)  # ours: a child of this process
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if self._cgroup_dir is not None:
            self._check_cgroups(self._cgroup_dir)
        if _mounts() != self._mounts:
            self.leaks.append(f"mounts changed: {sorted(set(_mounts()) ^ set(self._mounts))}")
        containers = self.state_dir / "containers"
        left = sorted(os.listdir(containers)) if containers.is_dir() else []
        if left:
            self.leaks.append(f"container directories: {left}")

    def _check_cgroups(self, parent: str) -> None:
        from supervisor import cgroups

        fs = cgroups.current_layout().fs
        cgroups.owner(fs).release(fs)  # our own marker: not a leak (else removed at exit)
        for dirpath, dirnames, _ in os.walk(parent, topdown=False):
            for d in dirnames:
                path = os.path.join(dirpath, d)
                if dirpath == parent:
                    self.leaks.append(f"cgroup {path}")
                with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.kill"), "w") as f:
                    f.write("1")
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        try:
            os.rmdir(parent)
        except OSError as e:
            self.leaks.append(f"cgroup {parent}: {e.strerror}")


# ---------------------------------------------------------------- tools and root filesystems


def ensure_tools(tools: Iterable[str] = TOOLS) -> None:
    """Install what is missing of the bench's Debian packages (as root, apt-get;
    ``scripts/debian-deps.sh bench``). Whatever stays missing is reported by the
    runner that needs it."""
    if all(shutil.which(t) for t in tools):
        return
    subprocess.run([str(REPO / "scripts" / "debian-deps.sh"), "bench"], check=False)


def busybox_rootfs(where: Path) -> Path:
    """A busybox root filesystem (``scripts/busybox-image.sh``), built once per run."""
    rootfs = where / "busybox"
    if not rootfs.is_dir():
        script = str(REPO / "scripts" / "busybox-image.sh")
        if subprocess.run([script, str(rootfs)], capture_output=True).returncode != 0:
            ensure_tools(["busybox"])
            subprocess.run([script, str(rootfs)], check=True, capture_output=True)
    return rootfs


# ---------------------------------------------------------------- output


def ms(x: float) -> str:
    return f"{x * 1e3:.2f} ms"


def per_s(x: float) -> str:
    return f"{x:,.0f}/s"


def times(x: float) -> str:
    return f"{x:.2f}x"


def figures_row(results: Results, runner: Runner) -> list[str]:
    """A runner's name, spawn path, c=1 median and p90, and c=64 throughput: the
    first cells of every start-to-exit table."""
    return [
        runner.name,
        runner.path,
        ms(results.value(runner.name, 1, "median")),
        ms(results.value(runner.name, 1, "p90")),
        per_s(results.value(runner.name, 64, "rate")),
    ]


def ratio_cell(results: Results, name: str, base: str) -> str:
    """The c=1 latency ratio and the c=64 throughput ratio of ``name`` to ``base``."""
    if name == base or not results.has(base, 1):
        return ""
    return f"{times(results.ratio(name, base, 1, 'median'))}, {times(results.ratio(name, base, 64, 'rate'))}"


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (pasted into README as it is), columns padded to line up."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [f"\n{title}\n", line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def machine() -> str:
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} CPUs, Linux {os.uname().release}, Python {sys.version.split()[0]},"
        f" load average {load:.1f} at the start"
    )


def arguments(doc: str, rounds: int = ROUNDS) -> argparse.ArgumentParser:
    """The options every bench takes."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: one round, small batches")
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds (default {rounds}, --quick 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    return parser


def rounds_of(args: argparse.Namespace, full: int = ROUNDS) -> int:
    return args.rounds or (1 if args.quick else full)


def sizes_of(args: argparse.Namespace) -> dict[int, int]:
    """Per round and runner: how many units at concurrency 1 and at 64."""
    return QUICK_SIZES if args.quick else SIZES


def write_json(path: str | None, figures: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(figures, indent=1, default=str))
