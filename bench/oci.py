"""Benchmark: ``mydocker-runc run`` against ``runc run`` and ``crun run``, and where
a one-shot Python runtime's time goes.

Run as root from the repository (a minute or two; ``--quick`` for a smoke run)::

    .venv/bin/python bench/oci.py [--rounds N] [--json out.json]

1. **Side by side**: the three runtimes ``run`` the same busybox bundle (``/bin/true``
   in new PID, mount, UTS, IPC and network namespaces, docker's mounts, masked and
   read-only paths, capabilities and device rules, a read-only root), one after the
   other, interleaved round by round, each timed from exec to exit of the runtime
   (which waits for the container and deletes it): wall time, and CPU time (user +
   system of the runtime and of the container it reaped), which a loaded machine
   disturbs much less. Medians, p90, ratios. crun and runc run in a mount namespace
   without the host's cgroup2 mount on a hybrid host (crun refuses hybrid:
   ``bench/ocibundle.py``'s ``HiddenCgroup2``); mydocker-runc sees the host as it is.
2. **Where mydocker-runc's time goes**: a bare interpreter (``python -I -S -c
   pass``), the interpreter with the venv's ``site`` (here an editable install,
   whose finder imports pathlib), the run path's imports, the runtime's own work
   (``lifecycle.run`` in a warm process: no interpreter start, no import), and the
   whole command through the console script and through a lean launcher
   (``python -I -S`` with the package on ``sys.path``: no ``site``; the runtime
   needs nothing outside the standard library), with and without frozen standard
   modules (``-X frozen_modules``).

Compare ratios from one run, not figures across runs: the report starts with the
load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from supervisor.oci.runtime import default_spec  # noqa: E402

PY = sys.executable
RUNC = str(Path(PY).with_name("mydocker-runc"))
LEAN = [
    PY,
    "-I",
    "-S",
    "-c",
    f"import sys; sys.path[:0] = [{str(REPO)!r}]; from supervisor.oci.runtime import main; main()",
]
IMPORTS = "import supervisor.oci.runtime, supervisor.oci.lifecycle"


def busybox_bundle(where: Path) -> Path:
    """A busybox bundle every runtime here takes (ociVersion 1.0.2: crun 1.8 refuses
    newer)."""
    rootfs = where / "rootfs"
    subprocess.run([str(REPO / "scripts/busybox-image.sh"), str(rootfs)], check=True, capture_output=True)
    config = default_spec()
    config["ociVersion"] = "1.0.2"
    config["root"] = {"path": "rootfs", "readonly": True}
    process: dict[str, object] = config["process"]  # type: ignore[assignment]
    process.update(terminal=False, args=["/bin/true"])
    # the runtimes mount cgroup v1 differently on a hybrid host: left out
    mounts: list[dict[str, object]] = config["mounts"]  # type: ignore[assignment]
    config["mounts"] = [m for m in mounts if m["destination"] != "/sys/fs/cgroup"]
    linux: dict[str, object] = config["linux"]  # type: ignore[assignment]
    linux["namespaces"] = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    (where / "config.json").write_text(json.dumps(config))
    return where


class Timer:
    """Runs commands, keeping their wall time and the CPU time (user + system) of the
    processes they reaped, the command's own included."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def run(self, name: str, argv: list[str], cwd: Path | None = None, keep: bool = True) -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        res = subprocess.run(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.decode().strip()}")
        if keep:
            self.wall.setdefault(name, []).append(wall)
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            self.cpu.setdefault(name, []).append(cpu)

    def median(self, name: str) -> tuple[float, float, float]:
        """(wall median, wall p90, CPU median)."""
        xs = sorted(self.wall[name])
        return (
            statistics.median(xs),
            xs[min(len(xs) - 1, int(0.9 * len(xs)))],
            statistics.median(self.cpu[name]),
        )


def ms(x: float) -> str:
    return f"{x * 1000:6.1f} ms"


@contextlib.contextmanager
def as_is() -> Iterator[None]:
    yield


def side_by_side(bundle: Path, tmp: Path, rounds: int, timer: Timer) -> list[str]:
    """Section 1; the runtimes measured."""
    try:
        from ocibundle import HiddenCgroup2

        hidden = HiddenCgroup2()
        enter: Callable[[], contextlib.AbstractContextManager[None]] = hidden.entered
        if hidden.note:
            print(f"# {hidden.note}")
    except ImportError as e:  # anyio missing: crun/runc see the host as it is
        enter = as_is
        print(f"# crun/runc on the host as it is ({e})")
    runtimes: dict[str, tuple[str, Callable[[], contextlib.AbstractContextManager[None]]]] = {
        "mydocker-runc": (RUNC, as_is)
    }
    for name in ("runc", "crun"):
        exe = shutil.which(name)
        if exe:
            runtimes[name] = (exe, enter)
    names = list(runtimes)
    for r in range(rounds + 1):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            exe, ctx = runtimes[name]
            with ctx():
                argv = [exe, "--root", str(tmp / f"state-{name}"), "run", f"bench-{os.getpid()}-{r}"]
                timer.run(name, argv, cwd=bundle, keep=r > 0)  # round 0 warms the caches
    return names


def warm_work(bundle: Path, tmp: Path, rounds: int) -> tuple[float, float]:
    """(wall, CPU) median of ``lifecycle.run`` in a process that has imported it."""
    code = f"""
import resource, sys, time
sys.path[:0] = [{str(REPO)!r}]
from supervisor.oci import lifecycle
root, bundle = {str(tmp / "state-warm")!r}, {str(bundle)!r}
lifecycle.run(root, "warm", bundle)
walls, cpus = [], []
for i in range({rounds}):
    k, t, c = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter(), time.process_time()
    lifecycle.run(root, f"w{{i}}", bundle)
    walls.append(time.perf_counter() - t)
    k2 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpus.append(time.process_time() - c + k2.ru_utime - k.ru_utime + k2.ru_stime - k.ru_stime)
print(sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2])
"""
    res = subprocess.run([PY, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    wall, cpu = (float(x) for x in res.stdout.split())
    return wall, cpu


def where_it_goes(bundle: Path, tmp: Path, rounds: int) -> dict[str, tuple[float, float]]:
    """Section 2: (wall, CPU) medians of each probe."""
    timer = Timer()
    state = str(tmp / "state-probes")
    probes = {
        "python -I -S -c pass (bare interpreter)": [PY, "-I", "-S", "-c", "pass"],
        "python -c pass (+ the venv's site)": [PY, "-c", "pass"],
        "python -I -S + the run path's imports": [
            PY,
            "-I",
            "-S",
            "-c",
            f"import sys; sys.path[:0] = [{str(REPO)!r}]; {IMPORTS}",
        ],
        "mydocker-runc --version (console script)": [RUNC, "--version"],
    }
    runs = {
        "mydocker-runc run (console script)": [RUNC],
        "lean launcher run (python -I -S)": LEAN,
        "lean launcher run, -X frozen_modules=off": [PY, "-X", "frozen_modules=off", *LEAN[1:]],
    }
    for i in range(rounds):
        for name, argv in probes.items():
            timer.run(name, argv)
        for j, (name, argv) in enumerate(runs.items()):
            timer.run(name, [*argv, "--root", state, "run", f"r{j}-{i}"], cwd=bundle)
    out = {name: timer.median(name)[::2] for name in [*probes, *runs]}
    out["lifecycle.run in a warm process (the work)"] = warm_work(bundle, tmp, rounds)
    return out  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="5 rounds")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/oci.py needs root", file=sys.stderr)
        return 2
    rounds = 5 if args.quick else args.rounds
    print(f"# load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="mydocker-bench-oci.") as tmp_name:
        tmp = Path(tmp_name)
        bundle = busybox_bundle(tmp / "bundle")
        timer = Timer()
        names = side_by_side(bundle, tmp, rounds, timer)
        print(
            "\n1. run of a busybox bundle (/bin/true): exec to exit of the runtime, which waits and deletes"
        )
        figures = {name: timer.median(name) for name in names}
        for name, (wall, p90, cpu) in figures.items():
            print(f"  {name:14s} wall median {ms(wall)}  p90 {ms(p90)}   CPU median {ms(cpu)}")
        mine = figures["mydocker-runc"]
        for base in ("runc", "crun"):
            if base in figures:
                other = figures[base]
                print(
                    f"  mydocker-runc / {base}: {mine[0] / other[0]:.2f}x wall, {mine[2] / other[2]:.2f}x CPU"
                )
        print("\n2. where mydocker-runc's time goes (medians)          wall       CPU")
        parts = where_it_goes(bundle, tmp, rounds)
        for name, (wall, cpu) in parts.items():
            print(f"  {name:48s} {ms(wall)}  {ms(cpu)}")
        if args.json:
            report = {
                "load": os.getloadavg()[0],
                "rounds": rounds,
                "side_by_side": {
                    n: dict(zip(("wall", "p90", "cpu"), f, strict=True)) for n, f in figures.items()
                },
                "where": {n: {"wall": w, "cpu": c} for n, (w, c) in parts.items()},
            }
            Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
