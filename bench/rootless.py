"""Rootless against root: the same containers started by uid 1000 and by root.

Run as root from a clone (``--quick`` for a smoke run)::

    .venv/bin/python bench/rootless.py [--quick] [--rounds N] [--json FILE]

c=1 latency and c=64 throughput of ``run_container(["/bin/true"])`` on asyncio (host
root, default confinement), each runner a fresh worker process (this script with
``--worker``), the workers interleaved by rounds:

- root; root without a cgroup (the rootless containers below have none: no cgroup
  v2 subtree is delegated to uid 1000 here); root with ``userns="auto"`` (a user
  namespace with a range of ids of its own, entered after the mounts);
- uid 1000 (``setpriv --reuid=1000 --regid=1000 --clear-groups``) with no
  subordinate ids (a one-id map, written by mydocker), and with a range in
  /etc/subuid and /etc/subgid (the whole range mapped by newuidmap/newgidmap: two
  set-uid programs run per container). A rootless child loads docker's seccomp
  filter whole (no zygote: a helper without root could only preload it with
  no_new_privs, which its children would inherit).

Every worker runs Debian's /usr/bin/python3 on a world-readable copy of mydocker
and its dependencies (a checkout may sit in a root-only directory), the root ones
too, so that only the user differs. The user's /etc/subuid and /etc/subgid are
bound over the host's in a private mount namespace (as tests/test_rootless.py
does): the host's files never change. The user must exist (newuidmap looks its
name up); the bench does not create it.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import common
from common import ApiRunner, Bench, Results, Samples, ms, per_s, table

UID = 1000
PYTHON = "/usr/bin/python3"
RANGE = "200000:65536"


def dependencies(root: str = "mydocker") -> set[str]:
    """The distributions mydocker needs here (its requirements' closure, no extras)."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        for req in metadata.distribution(name).requires or []:
            dep = re.match(r"[A-Za-z0-9_.-]+", req)
            if dep is None or "extra ==" in req:
                continue
            try:
                metadata.distribution(dep[0])
            except metadata.PackageNotFoundError:
                continue  # for another platform or Python
            todo.append(dep[0])
    return seen - {root}


def readable_code(where: Path) -> Path:
    """mydocker, its dependencies and this bench where any user can read them."""
    site = where / "site"
    site.mkdir(parents=True)
    for name in sorted(dependencies()):
        for top in {str(f).split("/")[0] for f in metadata.distribution(name).files or []}:
            src = Path(metadata.distribution(name).locate_file(top))
            if top.endswith((".dist-info", ".pth")) or top in ("__pycache__", "..") or not src.exists():
                continue
            if src.is_dir():
                shutil.copytree(
                    src, site / top, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(src, site / top)
    shutil.copytree(
        common.REPO / "supervisor", where / "supervisor", ignore=shutil.ignore_patterns("__pycache__")
    )
    (where / "bench").mkdir()
    for f in ("common.py", "rootless.py"):
        shutil.copy2(common.REPO / "bench" / f, where / "bench" / f)
    subprocess.run(["chmod", "-R", "a+rX", str(where)], check=True)
    return where


class Worker:
    """One runner: the command line of a fresh worker process, as root or as uid 1000."""

    def __init__(self, name: str, spec: dict[str, Any], user: dict[str, str] | None = None) -> None:
        self.name, self.spec, self.user = name, spec, user
        self.available: str | None = None
        self.path = "-"

    def argv(self, code: Path, sizes: dict[int, int], env: dict[str, str]) -> list[str]:
        job = json.dumps({**self.spec, "sizes": sizes})
        worker = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
        worker += [PYTHON, str(code / "bench" / "rootless.py"), "--worker", job]
        if self.user is None:
            return worker
        binds = " && ".join(f"mount --bind {shlex.quote(f)} /etc/{n}" for n, f in self.user.items())
        user = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *worker]
        return [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"{binds} && exec {shlex.join(user)}",
        ]


def worker_main(job: dict[str, Any]) -> None:
    """In the worker process: a batch per concurrency, as JSON on stdout."""
    runner = ApiRunner("worker", "asyncio", cgroup=job["cgroup"], **job["options"])
    out: dict[str, Any] = {}
    for c, n in job["sizes"].items():
        s = runner.batch(n, int(c))
        out[c] = {"latencies": s.latencies, "seconds": s.seconds}
    out["path"] = runner.path
    print(json.dumps(out))


def main() -> int:
    parser = common.arguments(__doc__)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    rounds = common.rounds_of(args)
    sizes = common.sizes_of(args)
    figures: dict[str, Any] = {"machine": common.machine(), "rounds": rounds}
    with Bench("bench/rootless.py") as bench:
        print(f"bench/rootless.py: {common.machine()}")
        common.ensure_tools(["setpriv", "unshare"])
        code = readable_code(bench.tmp / "code")
        home, state = bench.tmp / "rootless" / "home", bench.tmp / "rootless" / "state"
        for d in (home, state):
            d.mkdir(parents=True)
            os.chown(d, UID, UID)
        files = {}
        for name, content in (("none", ""), ("range", f"{UID}:{RANGE}\n")):
            for db in ("subuid", "subgid"):
                files[name, db] = bench.tmp / "rootless" / f"{db}-{name}"
                files[name, db].write_text(content)
                os.chmod(files[name, db], 0o644)
        o = {"cgroup_parent": bench.cgroup_parent} if bench.cgroup_parent else {}
        workers = [
            Worker("root", {"options": o, "cgroup": True}),
            Worker("root, no cgroup", {"options": {}, "cgroup": False}),
            Worker('root, userns="auto"', {"options": {**o, "userns": "auto"}, "cgroup": True}),
            Worker(
                "uid 1000, one id mapped",
                {"options": {}, "cgroup": True},
                {db: str(files["none", db]) for db in ("subuid", "subgid")},
            ),
            Worker(
                f"uid 1000, subuid range {RANGE} (newuidmap)",
                {"options": {}, "cgroup": True},
                {db: str(files["range", db]) for db in ("subuid", "subgid")},
            ),
        ]
        try:
            pwd.getpwuid(UID)
        except KeyError:
            workers[-1].available = f"no user has uid {UID} (newuidmap looks its name up)"
        if not shutil.which("newuidmap"):
            workers[-1].available = "newuidmap is not installed (uidmap)"
        base_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(code / "site"),
        }
        envs = {
            True: {**base_env, "HOME": str(home), "MYDOCKER_STATE_DIR": str(state)},
            False: {**base_env, "HOME": "/root", "MYDOCKER_STATE_DIR": str(bench.state_dir)},
        }
        results = Results()
        print(f"interleaved: {rounds} round(s); per round and runner: c=1: {sizes[1]}, c=64: {sizes[64]}")
        for rnd in range(rounds):
            live = [w for w in workers if w.available is None]
            k = rnd % len(live)
            for w in live[k:] + live[:k]:
                argv = w.argv(code, sizes, envs[w.user is not None])
                r = subprocess.run(argv, capture_output=True, cwd="/")
                if r.returncode != 0:
                    raise RuntimeError(f"{w.name}: worker exited {r.returncode}: {r.stderr.decode()[-2000:]}")
                out = json.loads(r.stdout.decode().splitlines()[-1])
                w.path = out.pop("path")
                for c, s in out.items():
                    results.add(w.name, int(c), rnd, Samples(s["latencies"], s["seconds"]))
            print(f"  round {rnd + 1}/{rounds} done", file=sys.stderr)
        left = list((state / "containers").iterdir()) if (state / "containers").is_dir() else []
        if left:
            bench.leaks.append(f"rootless container directories: {left}")
        rows = []
        for w in workers:
            if w.available is not None:
                rows.append([w.name, "-", f"not available: {w.available}", "", "", "", ""])
                continue
            rows.append(
                [
                    w.name,
                    w.path,
                    ms(results.value(w.name, 1, "median")),
                    ms(results.value(w.name, 1, "p90")),
                    per_s(results.value(w.name, 64, "rate")),
                    common.ratio_cell(results, w.name, "root"),
                    common.ratio_cell(results, w.name, "root, no cgroup"),
                ]
            )
        headers = ["who", "spawn path", "c=1 median", "c=1 p90", "c=64", "vs root: c=1, c=64"]
        headers.append("vs root, no cgroup: c=1, c=64")
        print(table("/bin/true on the host's root, asyncio (medians over rounds)", headers, rows))
        figures.update(results.to_json())
    common.write_json(args.json, figures)
    return 1 if bench.leaks else 0


if __name__ == "__main__":
    sys.exit(main())
