"""Benchmark: a container on a bridge network against --network none and against
unshare(1) given a veth by ip(8), side by side in one run.

Run as root from the repository (about a minute; ``--quick`` for a smoke run)::

    python bench/network.py            # or: python bench/network.py --quick --json out.json

Start-to-exit latency (median, p90) at concurrency 1 and throughput (containers/s)
at concurrency 1 and 64 of a namespaced ``/bin/true``, interleaved as in
``bench/run.py`` (every round runs every runner, in a rotated order):

- ``mydocker --network NAME``: ``run_container(..., network=NAME)`` on asyncio: a
  lease, the nftables elements, a veth with eth0 configured before the command,
  and all of it undone at the end;
- ``mydocker --network none``: the default (only ``lo``), for the cost of the above;
- ``unshare(1) + ip veth``: ``unshare --fork --pid --mount --uts --ipc --net
  --mount-proc sh -c 'read _; exec /bin/true'``, its veth made by ``ip -b -`` on the
  host and configured by ``nsenter -n ip -b -`` inside, then released (the veth
  goes with its namespace), all with asyncio subprocesses.

The network (and its bridge) is made for the run and removed after it. Every
container is checked (exit status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run as base  # bench/run.py: Cell, _batch, Runner, ExecRunner's watcher

from supervisor import DEVNULL, run_container
from supervisor.network import create_network, remove_network

CONCURRENCY = (1, 64)
UNSHARE = ["unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--net", "--mount-proc"]


class ApiRunner(base.Runner):
    def __init__(self, name: str, network: str | None, state_dir: str) -> None:
        self.name = name
        self.network = network
        self.state_dir = state_dir

    async def one(self) -> None:
        result = await run_container(
            ["/bin/true"], stdout=DEVNULL, stderr=DEVNULL, network=self.network, state_dir=self.state_dir
        )
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: exit status {result.returncode}")

    async def warm(self) -> None:
        for _ in range(3):
            await self.one()


async def _run(*argv: str, stdin: bytes | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")


class UnshareVethRunner(base.Runner):
    """unshare(1), and a veth on the same bridge made and configured by ip(8)."""

    name = "unshare(1) + ip veth"

    def __init__(self, bridge: str, subnet: str, gateway: str) -> None:
        self.bridge = bridge
        self.gateway = gateway
        self.prefix = subnet.rsplit(".", 1)[0]  # a /24: its upper half (mydocker leases from .2)
        self.numbers = itertools.count()

    async def one(self) -> None:
        n = next(self.numbers)
        veth, address = f"mydbench{n % 4096:x}", f"{self.prefix}.{128 + n % 120}"
        proc = await asyncio.create_subprocess_exec(
            *UNSHARE,
            "sh",
            "-c",
            "read _; exec /bin/true",
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None
        try:
            children = f"/proc/{proc.pid}/task/{proc.pid}/children"
            child = ""
            while not child:
                with open(children) as f:
                    child = f.read().strip()
                if not child:
                    await asyncio.sleep(0.0005)
            await _run(
                "ip",
                "-b",
                "-",
                stdin=f"link add {veth} type veth peer name eth0 netns {child}\n"
                f"link set {veth} master {self.bridge} up\n".encode(),
            )
            inside = f"addr add {address}/24 dev eth0\nlink set eth0 up\n"
            inside += f"route add default via {self.gateway}\n"
            await _run("nsenter", "-t", child, "-n", "ip", "-b", "-", stdin=inside.encode())
            proc.stdin.write(b"\n")
            _, err = await proc.communicate()
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"unshare exited {proc.returncode}: {err.decode(errors='replace').strip()}")

    async def warm(self) -> None:
        base._use_pidfd_watcher()
        await self.one()


def measure(runners: list[base.Runner], rounds: int, n: dict[int, int]) -> dict[str, dict[int, base.Cell]]:
    cells = {r.name: {c: base.Cell() for c in CONCURRENCY} for r in runners}
    for rnd in range(rounds):
        for c in CONCURRENCY:
            k = (rnd + c) % len(runners)
            for r in runners[k:] + runners[:k]:
                r.batch(n[c], c, cells[r.name][c])
        print(f"  round {rnd + 1}/{rounds} done", file=sys.stderr)
    return cells


def report(runners: list[base.Runner], cells: dict[str, dict[int, base.Cell]]) -> dict[str, object]:
    print("\nstart-to-exit of a namespaced /bin/true, on a network or not")
    print(f"{'runner':26s} | c=1  median    p90      /s | c=64     /s")
    out: dict[str, object] = {}
    for r in runners:
        one, many = cells[r.name][1], cells[r.name][64]
        med, p90 = one.quantile(0.5), one.quantile(0.9)
        cols = f"{base.fmt_ms(med)} ms {base.fmt_ms(p90)} ms {one.rate:6.0f}"
        print(f"{r.name:26s} |  {cols} | {many.rate:10.0f}")
        out[r.name] = {
            "median_ms": med * 1e3,
            "p90_ms": p90 * 1e3,
            "c1_per_s": one.rate,
            "c64_per_s": many.rate,
        }
    mine = cells[runners[0].name]
    print()
    for other in runners[1:]:
        theirs = cells[other.name]
        lat = mine[1].quantile(0.5) / theirs[1].quantile(0.5)
        thr = mine[64].rate / theirs[64].rate
        print(f"  {runners[0].name} vs {other.name}: latency {lat:4.2f}x, throughput at c=64 {thr:4.2f}x")
        out[f"vs {other.name}"] = {"latency": lat, "throughput_c64": thr}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds, small batches")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/network.py needs root", file=sys.stderr)
        return 1
    rounds, n = (1, {1: 20, 64: 64}) if args.quick else (3, {1: 100, 64: 640})
    with tempfile.TemporaryDirectory(prefix="mydocker-bench-") as state:
        name = "bench" + os.urandom(2).hex()
        net = create_network(name, state_dir=state)
        try:
            runners: list[base.Runner] = [
                ApiRunner(f"mydocker --network {name}", name, state),
                ApiRunner("mydocker --network none", None, state),
                UnshareVethRunner(net.bridge, net.subnet, net.gateway),
            ]
            cells = measure(runners, rounds, n)
        finally:
            remove_network(name, state_dir=state)
    runners[0].name = "mydocker --network NAME"
    cells["mydocker --network NAME"] = cells.pop(f"mydocker --network {name}")
    figures = report(runners, cells)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
