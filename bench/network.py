"""Networks: a container on a bridge network against --network none and against
unshare(1) given a veth by ip(8), side by side in one run.

Run as root from a clone (about a minute; ``--quick`` for a smoke run)::

    .venv/bin/python bench/network.py [--quick] [--rounds N] [--json FILE]

Start-to-exit latency (median, p90) at concurrency 1 and throughput (containers/s)
at concurrency 1 and 64 of a namespaced ``/bin/true``, interleaved as every bench
(``common.interleave``: every round runs every runner, in a rotated order):

- ``mydocker --network NAME``: ``run_container(..., network=NAME)`` on asyncio: a
  lease, the nftables elements, a veth with eth0 configured before the command,
  and all of it undone at the end;
- ``mydocker --network none``: the default (only ``lo``), for the cost of the above;
- ``unshare(1) + ip veth``: ``unshare -fpmuin --mount-proc sh -c 'read _; exec
  /bin/true'``, its veth made by ``ip -b -`` on the
  host and configured by ``nsenter -n ip -b -`` inside, then released (the veth
  goes with its namespace), all with asyncio subprocesses.

The network (and its bridge) is made for the run and removed after it; the run
checks that none of its interfaces is left either. Every container is checked
(exit status 0).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from typing import Any

import common
from common import ApiRunner, Bench, Results, Runner, ms, per_s, run_command, table, times

from supervisor.network import create_network, remove_network


class UnshareVethRunner(Runner):
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
            *common.UNSHARE,
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
            await run_command(
                ["ip", "-b", "-"],
                stdin=f"link add {veth} type veth peer name eth0 netns {child}\n"
                f"link set {veth} master {self.bridge} up\n".encode(),
            )
            inside = f"addr add {address}/24 dev eth0\nlink set eth0 up\n"
            inside += f"route add default via {self.gateway}\n"
            await run_command(["nsenter", "-t", child, "-n", "ip", "-b", "-"], stdin=inside.encode())
            proc.stdin.write(b"\n")
            _, err = await proc.communicate()
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"unshare exited {proc.returncode}: {err.decode(errors='replace').strip()}")

    async def warm(self) -> None:
        common.use_pidfd_watcher()
        await self.one()


def report(runners: list[Runner], results: Results) -> dict[str, Any]:
    rows = [
        [
            r.name,
            ms(results.value(r.name, 1, "median")),
            ms(results.value(r.name, 1, "p90")),
            per_s(results.value(r.name, 1, "rate")),
            per_s(results.value(r.name, 64, "rate")),
        ]
        for r in runners
    ]
    print(
        table(
            "start-to-exit of a namespaced /bin/true, on a network or not",
            ["runner", "c=1 median", "c=1 p90", "c=1", "c=64"],
            rows,
        )
    )
    mine = runners[0].name
    out: dict[str, Any] = results.to_json()
    print()
    for other in runners[1:]:
        lat = results.ratio(mine, other.name, 1, "median")
        thr = results.ratio(mine, other.name, 64, "rate")
        print(f"  {mine} vs {other.name}: latency {times(lat)}, throughput at c=64 {times(thr)}")
        out[f"vs {other.name}"] = {"latency": lat, "throughput_c64": thr}
    return out


def interfaces(bridge: str) -> set[str]:
    """The run's own interfaces: its network's bridge, the baseline's veths."""
    return {name for name in os.listdir("/sys/class/net") if name == bridge or name.startswith("mydbench")}


def main() -> int:
    args = common.arguments(__doc__).parse_args()
    rounds = common.rounds_of(args)
    n = common.sizes_of(args)
    with Bench("bench/network.py") as bench:
        print(f"bench/network.py: {common.machine()}")
        common.ensure_tools(["ip", "nsenter", "unshare"])
        name = "bench" + os.urandom(2).hex()
        net = create_network(name, state_dir=str(bench.state_dir))
        try:
            runners: list[Runner] = [
                ApiRunner("mydocker --network NAME", network=name, **bench.options),
                ApiRunner("mydocker --network none", **bench.options),
                UnshareVethRunner(net.bridge, net.subnet, net.gateway),
            ]
            results = common.interleave(runners, rounds, n)
        finally:
            remove_network(name, state_dir=str(bench.state_dir))
        figures = report(runners, results)
        # A namespace's veth goes with it, but the kernel tears namespaces down in a
        # worker, later (seconds, on a loaded machine): wait for them to go.
        deadline = time.monotonic() + 60
        while interfaces(net.bridge) and time.monotonic() < deadline:
            time.sleep(0.1)
        if interfaces(net.bridge):
            bench.leaks.append(f"interfaces: {sorted(interfaces(net.bridge))}")
    common.write_json(args.json, figures)
    return 1 if bench.leaks else 0


if __name__ == "__main__":
    sys.exit(main())
