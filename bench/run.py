"""All of mydocker's benches, one after the other, each in a fresh process.

Run as root from a clone (``make bench``; ``--quick`` for a smoke run of a minute)::

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--only start,exec] [--json FILE]

Each bench is a script of its own that can also be run alone, with the same
options; each says in its docstring what it measures and against what:

=============== =====================================================================
start           container start: c=1 latency, c=64 throughput, asyncio and trio,
                against unshare(1), crun and runc (same busybox tree); the 1 GB
                supervisor; one spawn helper vs one per CPU
confinement     the default confinement against privileged, seccomp off, no netns
                pool, no cgroup, docker's profile from a file
rootless        uid 1000 against root (one id, a subuid range, userns=auto)
memory          the supervisor's RSS per open container, the spawn helpers' RSS
cli             ``mydocker run /bin/true`` from a shell; its import time
exec            exec round trip into a running container; write_file/read_file
network         a container on a bridge network
lifecycle       run -d, exec and ps through the daemon and the records, against a
                shell's ``unshare ... &`` and nsenter; the daemon's RSS per container
judge           what each limit and the verdict report cost a judged container
oci             ``mydocker-runc run`` against ``runc run`` and ``crun run``; where a
                one-shot Python runtime's time goes
=============== =====================================================================

Every bench runs its comparisons interleaved, reports medians over rounds, and
checks that it left nothing behind; this driver checks it once more (no process
left, as the benches' subreaper) and exits non-zero if any bench failed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = {
    "start": "start.py",
    "confinement": "confinement.py",
    "rootless": "rootless.py",
    "memory": "memory.py",
    "cli": "cli_startup.py",
    "exec": "exec_files.py",
    "network": "network.py",
    "lifecycle": "lifecycle.py",
    "judge": "judge.py",
    "oci": "oci.py",
}
PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: one round of small batches")
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds for every bench (default: each its own)"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every bench's figures as one JSON file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/run.py: needs root (namespaces, cgroups)", file=sys.stderr)
        return 2
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown bench(es): {', '.join(unknown)}")
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    report: dict[str, object] = {"quick": args.quick}
    failed = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mydocker-bench-run-") as tmp:
        for name in chosen:
            out = Path(tmp) / f"{name}.json"
            argv = [sys.executable, str(HERE / SECTIONS[name]), "--json", str(out)]
            argv += ["--quick"] if args.quick else []
            argv += ["--rounds", str(args.rounds)] if args.rounds else []
            print(f"\n==== bench/{SECTIONS[name]} ====", flush=True)
            t, cpu = time.monotonic(), cpu_seconds()
            status = subprocess.run(argv).returncode
            elapsed = time.monotonic() - t
            busy, ours = (b - a for a, b in zip(cpu, cpu_seconds(), strict=True))
            capacity = elapsed * (os.cpu_count() or 1) / 100
            print(
                f"==== bench/{SECTIONS[name]}: {elapsed:.0f} s, exit status {status}; the CPUs were busy"
                f" {busy / capacity:.0f}% of the time: this bench {ours / capacity:.0f}%, other processes"
                f" and kernel threads {(busy - ours) / capacity:.0f}%",
                flush=True,
            )
            if status != 0:
                failed.append(name)
            if out.exists():
                report[name] = json.loads(out.read_text())
    left = orphans()
    print(f"\nall benches: {time.monotonic() - t0:.0f} s; processes left behind: {left or 'none'}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 1 if failed or left else 0


def cpu_seconds() -> tuple[float, float]:
    """CPU time used so far by the whole machine (/proc/stat, every CPU) and by this
    driver and its reaped descendants (the benches, their helpers and containers:
    those cloned with CLONE_PARENT are reaped by a bench too). The difference over a
    bench is what other processes and kernel threads took meanwhile: the noise."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    hz = os.sysconf("SC_CLK_TCK")
    ours = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        ours += usage.ru_utime + usage.ru_stime
    return (user + nice + system + irq + softirq + steal) / hz, ours


def orphans() -> list[str]:
    """Processes reparented to this driver (it is their subreaper) and still running,
    after reaping those that have exited (a stopped daemon, a killed baseline) and
    giving the rest two seconds to go."""
    me, found = str(os.getpid()), list[str]()
    deadline = time.monotonic() + 2
    while True:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if ppid == me and state != "Z":
                found.append(f"{pid} {stat[stat.index('(') : stat.rindex(')') + 1]}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
