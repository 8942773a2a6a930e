"""CLI start-up: ``mydocker run /bin/true`` from a shell, against the interpreter's own
start and other runtimes' command lines, and where its import time goes.

Run as root from a clone (``--quick`` for a smoke run)::

    .venv/bin/python bench/cli_startup.py [--quick] [--rounds N] [--json FILE]

Wall time of one command line, started and waited for as a shell would
(``subprocess.run``, sequentially), interleaved by rounds as every bench:

- ``python -c pass`` (the interpreter mydocker's console script runs on: the floor);
- ``mydocker run /bin/true`` (the CLI clones in-process: no helper to start);
- the same made to clone through a spawn helper (``prefer_direct_clone`` off): what
  the in-process clone saves; and with ``--security-opt seccomp=unconfined``: what
  compiling docker's profile costs a fresh process;
- ``mydocker run --rootfs BUSYBOX /bin/true`` against ``crun run`` and ``runc run`` of
  a bundle of the same tree with docker's confinement (``ocibundle.py``);
- ``unshare -fpmuin --mount-proc /bin/true``.

Which way each mydocker line cloned is checked by looking at its children while a
``sleep`` runs in the container. Then ``python -X importtime`` of ``mydocker run
/bin/true``: the modules that cost most (medians over a few runs).

(``mydocker run --rm`` is docker's habit, but mydocker has no ``--rm``: a
container's directory is always removed when it ends.)
"""

from __future__ import annotations

import contextlib
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common
import ocibundle as oci
from common import Bench, Results, Samples, ms, table

PYTHON = sys.executable
#: run the CLI with ``prefer_direct_clone`` made a no-op: it clones through a helper
VIA_HELPER = (
    "import sys, supervisor.spawn as s; s.prefer_direct_clone = lambda enabled=True: None; "
    "from supervisor.cli import main; sys.argv[0] = 'mydocker'; main()"
)


def mydocker() -> list[str]:
    """The CLI's Python arguments: its console script next to this interpreter, else
    ``-m supervisor.cli``."""
    script = Path(PYTHON).parent / "mydocker"
    return [str(script)] if script.exists() else ["-m", "supervisor.cli"]


def command(argv: list[str]) -> Callable[[], Sequence[str]]:
    return lambda: argv


def timed(argv: Sequence[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)}: exit status {r.returncode}: {r.stderr.decode().strip()[-300:]}"
        )
    return dt


def clone_path(argv: Sequence[str]) -> str:
    """How a ``mydocker run`` line clones: run it with ``sleep``, and once the sleep
    runs, look at its children (a spawn helper is one, running ``helper_main``)."""
    proc = subprocess.Popen([*argv, "sleep", "2"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cmdlines = {}
            for child in common.children_of(proc.pid):
                with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as f:
                    cmdlines[child] = f.read()
            if b"sleep\x002\x00" in cmdlines.values():
                kinds = [
                    "zygote" if common.seccomp_mode(pid) == "2" else "helper"
                    for pid, cmd in cmdlines.items()
                    if b"helper_main" in cmd
                ]
                return "+".join(sorted(kinds)) or "in-process clone"
            time.sleep(0.02)
        return "?"
    finally:
        proc.wait()


def section_wall(bench: Bench, rounds: int, n: int) -> dict[str, Any]:
    rootfs = str(common.busybox_rootfs(bench.tmp))
    script = mydocker()
    run = ["run", "--cgroup-parent", bench.cgroup_parent] if bench.cgroup_parent else ["run"]
    # the console script is run as a shell runs it (by its #! line), else by python -m
    cli = script[:1] if script[0] != "-m" else [PYTHON, *script]
    lines = {
        "python -c pass": command([PYTHON, "-c", "pass"]),
        "mydocker run /bin/true": command([*cli, *run, "/bin/true"]),
        "mydocker run /bin/true, through a spawn helper": command(
            [PYTHON, "-c", VIA_HELPER, *run, "/bin/true"]
        ),
        "mydocker run --security-opt seccomp=unconfined /bin/true": command(
            [*cli, *run, "--security-opt", "seccomp=unconfined", "/bin/true"]
        ),
        "mydocker run --rootfs BUSYBOX /bin/true": command([*cli, *run, "--rootfs", rootfs, "/bin/true"]),
        "unshare -fpmuin --mount-proc /bin/true": command([*common.UNSHARE, "/bin/true"]),
    }
    hidden = oci.HiddenCgroup2()
    bench.cleanup(hidden.close)
    namespaces: dict[str, Any] = {}
    for runtime in ("crun", "runc"):
        r = oci.oci_runner(runtime, "docker", bench.tmp / "cli", Path(rootfs), hidden, 1)
        if r.available is None:
            lines[f"{runtime} run (docker confinement)"] = r.argv
            namespaces[f"{runtime} run (docker confinement)"] = hidden.entered
        else:
            print(f"{runtime}: not available: {r.available}")
    paths = {name: clone_path(argv()[:-1]) for name, argv in lines.items() if name.startswith("mydocker")}
    results = Results()
    names = list(lines)
    for rnd in range(rounds):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            with namespaces.get(name, contextlib.nullcontext)():
                samples = [timed(lines[name]()) for _ in range(n)]
            results.add(name, 1, rnd, Samples(samples, sum(samples)))
        print(f"  round {rnd + 1}/{rounds} done", file=sys.stderr)
    base = "python -c pass"
    rows = [
        [
            name,
            paths.get(name, "-"),
            ms(results.value(name, 1, "median")),
            ms(results.value(name, 1, "p90")),
            "" if name == base else f"{results.difference(name, base, 1, 'median') * 1e3:+.2f} ms",
        ]
        for name in names
    ]
    headers = ["command line", "clone", "median", "p90", "over python -c pass"]
    print(table("wall time from a shell, sequential (medians over rounds)", headers, rows))
    return {"paths": paths, **results.to_json()}


IMPORT_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def section_imports(runs: int, top: int = 12) -> dict[str, Any]:
    """``python -X importtime`` of ``mydocker run /bin/true``: medians over runs."""
    self_us: dict[str, list[int]] = {}
    cumulative: dict[str, list[int]] = {}
    roots: set[str] = set()
    for _ in range(runs):
        argv = [PYTHON, "-X", "importtime", *mydocker(), "run", "/bin/true"]
        err = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=True).stderr.decode()
        for m in IMPORT_LINE.finditer(err):
            own, cum, indent, name = int(m[1]), int(m[2]), len(m[3]), m[4]
            self_us.setdefault(name, []).append(own)
            cumulative.setdefault(name, []).append(cum)
            if indent <= 1:
                roots.add(name)
    med = {name: statistics.median(v) for name, v in self_us.items()}
    cum = {name: statistics.median(v) for name, v in cumulative.items()}
    total = sum(med.values())
    print(
        f"\npython -X importtime of mydocker run /bin/true: {len(med)} modules, {total / 1e3:.1f} ms in all"
    )
    by_self = sorted(med, key=med.get, reverse=True)[:top]  # type: ignore[arg-type]
    print(
        table(
            f"top {top} modules by their own import time (medians of {runs} runs)",
            ["module", "self", "cumulative"],
            [[n, f"{med[n] / 1e3:.1f} ms", f"{cum[n] / 1e3:.1f} ms"] for n in by_self],
        )
    )
    by_cum = sorted(roots, key=cum.get, reverse=True)[:top]  # type: ignore[arg-type]
    print(
        table(
            "top-level imports by cumulative time (what each import statement of the entry point costs)",
            ["module", "cumulative"],
            [[n, f"{cum[n] / 1e3:.1f} ms"] for n in by_cum],
        )
    )
    return {
        "total_ms": total / 1e3,
        "self_ms": {n: med[n] / 1e3 for n in by_self},
        "roots_ms": {n: cum[n] / 1e3 for n in by_cum},
    }


def main() -> int:
    args = common.arguments(__doc__).parse_args()
    rounds = common.rounds_of(args)
    figures: dict[str, Any] = {"machine": common.machine(), "rounds": rounds}
    with Bench("bench/cli_startup.py") as bench:
        print(f"bench/cli_startup.py: {common.machine()}")
        common.ensure_tools()
        figures["wall"] = section_wall(bench, rounds, 5 if args.quick else 10)
        figures["imports"] = section_imports(2 if args.quick else 7)
    common.write_json(args.json, figures)
    return 1 if bench.leaks else 0


if __name__ == "__main__":
    sys.exit(main())
