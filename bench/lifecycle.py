"""Benchmark: detached containers and their lifecycle (issue 13), against what a shell
would do without mydocker, side by side in one run.

Run as root from the repository (a few minutes; ``--quick`` for a smoke run)::

    python bench/lifecycle.py            # or: --quick --json out.json

What it measures, in a state directory of its own (its daemon stopped at the end):

- ``run -d`` to running: the wall time of ``mydocker run -d sleep 60`` with the daemon
  warm (the CLI's start-up included), and of the request alone made in-process
  (``daemon.client.request``: what the daemon adds), against ``unshare --fork --pid
  ... sleep 60 &`` started by a shell (``sh -c '... & echo $!'``);
- ``exec`` round trip of ``/bin/true`` into a running detached container: ``mydocker
  exec`` (CLI), the library's ``exec`` on a target built from the record (what the
  CLI runs after its start-up), and ``nsenter -t PID -a /bin/true``;
- ``ps -a`` with 0, 100 and 1000 containers (exited, kept records);
- the daemon's RSS per detached container (N ``sleep`` containers, RSS delta / N),
  next to the library's (``open_container`` in this process);
- ``run_container`` of ``/bin/true`` on asyncio (c=1 median), to see that the
  registration the CLI does costs the library nothing (it registers nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from supervisor import DEVNULL, open_container, run_container  # noqa: E402

MYDOCKER = [str(Path(sys.executable).with_name("mydocker"))]
if not Path(MYDOCKER[0]).exists():
    MYDOCKER = [sys.executable, "-m", "supervisor.cli"]
UNSHARE = ["unshare", "--fork", "--kill-child", "--pid", "--mount", "--uts", "--ipc", "--net", "--mount-proc"]


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    return f"{statistics.median(s) * 1e3:7.2f} ms (p90 {s[int(len(s) * 0.9) - 1] * 1e3:.2f})"


class Bench:
    def __init__(self, sdir: str, quick: bool, rounds: int | None = None) -> None:
        self.sdir = sdir
        self.quick = quick
        self.samples = rounds or (5 if quick else 30)
        self.env = {**os.environ, "MYDOCKER_STATE_DIR": sdir, "MYDOCKER_DAEMON_IDLE": "0"}
        self.results: dict[str, object] = {}

    def md(self, *args: str) -> str:
        r = subprocess.run([*MYDOCKER, *args], env=self.env, capture_output=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"mydocker {' '.join(args)}: {r.stderr.decode().strip()}")
        return r.stdout.decode()

    def run_d(self) -> None:
        n = self.samples
        self.md("run", "-d", "--rm", "true")  # the daemon, started and warm
        ids: list[str] = []
        cli = _timed(lambda: ids.append(self.md("run", "-d", "sleep", "60").strip()), n)

        from supervisor.daemon import client, protocol
        from supervisor.spec import ContainerSpec

        def request() -> None:
            spec = ContainerSpec(command=("sleep", "60"), state_dir=self.sdir)
            ids.append(client.request(self.sdir, {"op": "run", "spec": protocol.pack(spec)})["id"])

        os.environ["MYDOCKER_STATE_DIR"] = self.sdir
        inproc = _timed(request, n)
        pids: list[str] = []
        sh = _timed(
            lambda: pids.append(
                subprocess.run(
                    ["sh", "-c", f"{' '.join(UNSHARE)} sleep 60 >/dev/null 2>&1 & echo $!"],
                    capture_output=True,
                    check=True,
                ).stdout.decode()
            ),
            n,
        )
        for pid in pids:
            subprocess.run(["kill", "-KILL", pid.strip()], check=False)
        self.md("rm", "-f", *ids)
        print(f"run -d to running, CLI:          {_ms(cli)}")
        print(f"run -d, the request alone:       {_ms(inproc)}")
        print(f"sh: unshare ... sleep 60 &:      {_ms(sh)}")
        print(f"  ratio CLI / sh:                {statistics.median(cli) / statistics.median(sh):.2f}x")
        self.results["run_d"] = {"cli": cli, "request": inproc, "sh_unshare": sh}

    def exec_round_trip(self) -> None:
        n = self.samples
        cid = self.md("run", "-d", "sleep", "600").strip()
        pid = json.loads(self.md("inspect", cid))[0]["State"]["Pid"]
        cli = _timed(lambda: self.md("exec", cid, "/bin/true"), n)
        nsenter = _timed(
            lambda: subprocess.run(["nsenter", "-t", str(pid), "-a", "/bin/true"], check=True), n
        )

        from supervisor import lifecycle, records

        entry = records.find(self.sdir, cid)
        target = lifecycle.exec_target(entry)

        async def lib() -> list[float]:
            from supervisor.exec import run_exec

            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = await run_exec(target, ["/bin/true"], stdout=DEVNULL, stderr=DEVNULL)
                out.append(time.perf_counter() - t0)
                assert r.returncode == 0
            return out

        library = asyncio.run(lib())
        os.close(target.pidfd)
        self.md("rm", "-f", cid)
        print(f"exec /bin/true, CLI:             {_ms(cli)}")
        print(f"exec /bin/true, library:         {_ms(library)}")
        print(f"nsenter -t PID -a /bin/true:     {_ms(nsenter)}")
        print(
            f"  ratio library / nsenter:       {statistics.median(library) / statistics.median(nsenter):.2f}x"
        )
        self.results["exec"] = {"cli": cli, "library": library, "nsenter": nsenter}

    def ps(self) -> None:
        counts = (0, 20) if self.quick else (0, 100, 1000)
        made: list[str] = []
        out = {}
        for count in counts:
            while len(made) < count:
                batch = min(50, count - len(made))
                procs = [
                    subprocess.Popen([*MYDOCKER, "run", "-d", "true"], env=self.env, stdout=subprocess.PIPE)
                    for _ in range(batch)
                ]
                for p in procs:
                    assert p.stdout is not None
                    made.append(p.stdout.read().decode().strip())
                    p.wait()
                    p.stdout.close()
            samples = _timed(lambda: self.md("ps", "-a"), 3 if self.quick else 10)
            out[count] = samples
            print(f"ps -a with {count:4} containers:     {_ms(samples)}")
        for i in range(0, len(made), 200):
            self.md("rm", "-f", *made[i : i + 200])
        self.results["ps"] = out

    def rss(self) -> None:
        n = 20 if self.quick else 200
        daemon = int(Path(self.sdir, "daemon.pid").read_text().split()[0])
        before = _rss_kb(daemon)
        ids = [self.md("run", "-d", "sleep", "600").strip() for _ in range(n)]
        time.sleep(0.5)
        after = _rss_kb(daemon)
        for i in range(0, len(ids), 100):
            self.md("rm", "-f", *ids[i : i + 100])

        async def library() -> float:
            base = _rss_kb(os.getpid())
            async with asyncio.TaskGroup():
                cs = [await open_container(["sleep", "600"], stdin=DEVNULL, stdout=DEVNULL) for _ in range(n)]
                grown = _rss_kb(os.getpid())
                for c in cs:
                    await c.aclose()
            return (grown - base) / n

        lib = asyncio.run(library())
        per = (after - before) / n
        print(f"daemon RSS per detached container: {per:6.1f} kB  ({n} containers)")
        print(f"library RSS per open container:    {lib:6.1f} kB")
        self.results["rss_kb"] = {"daemon": per, "library": lib}

    def library_start(self) -> None:
        n = 20 if self.quick else 200

        async def go() -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                await run_container(["/bin/true"], stdout=DEVNULL, stderr=DEVNULL)
                out.append(time.perf_counter() - t0)
            return out

        samples = asyncio.run(go())
        print(f"run_container /bin/true (asyncio): {_ms(samples)}")
        self.results["run_container"] = samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--rounds", type=int, help="samples of run -d and of exec (default 30, quick 5)")
    parser.add_argument("--json", metavar="FILE", help="keep the figures")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/lifecycle.py needs root")
    with tempfile.TemporaryDirectory(prefix="mydocker-bench-") as sdir:
        bench = Bench(sdir, args.quick, args.rounds)
        try:
            bench.run_d()
            bench.exec_round_trip()
            bench.rss()
            bench.ps()
            bench.library_start()
        finally:
            subprocess.run([*MYDOCKER, "daemon", "--stop"], env=bench.env, check=False)
        if args.json:
            Path(args.json).write_text(json.dumps(bench.results, indent=1))


if __name__ == "__main__":
    main()
