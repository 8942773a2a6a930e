"""Exec and files in a running container (issue 17), side by side with the alternatives.

Run as root from a clone (``--quick`` for a smoke run)::

    .venv/bin/python bench/exec_files.py [--quick] [--rounds N] [--json FILE]

1. Exec round trip of ``/bin/true`` in a running container (``Container.exec``,
   host root, default confinement; c=1 latency, c=64 throughput, 64 execs at once
   into the one container) on asyncio and trio, against starting a fresh container
   for it (``run_container``) and against ``nsenter -t PID -a /bin/true`` (started by
   asyncio; it joins the namespaces but takes none of the confinement or the
   cgroup).
2. ``write_file`` and ``read_file`` of 4 kB and 100 MB in a running container with a
   busybox root (the file lands in its overlay layer), against the same through an
   exec (``sh -c 'cat > F'`` fed the data, ``cat F`` read back) and against a plain
   file on the host on the same filesystem (``anyio.Path``, no container: the floor).

Every container of a batch is started for it and stopped after it; interleaved as
every bench (``common.interleave``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import common
from common import ApiRunner, Bench, CommandRunner, Results, Runner, ms, table

from supervisor import DEVNULL, open_container
from supervisor.container import Container


@contextlib.asynccontextmanager
async def sleeping(**options: Any) -> AsyncIterator[Container]:
    """A container running ``sleep`` for as long as the ``with`` lasts."""
    container = await open_container(
        ["sleep", "100000"], stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL, **options
    )
    async with container:
        yield container


class ExecRunner(Runner):
    """``Container.exec(["/bin/true"])`` into one running container."""

    def __init__(self, name: str, backend: str, options: dict[str, Any]) -> None:
        self.name, self.backend, self.options = name, backend, options
        self.container: Container | None = None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        async with sleeping(**self.options) as self.container:
            yield

    async def one(self) -> None:
        assert self.container is not None
        await self.container.exec(["/bin/true"], stdout=DEVNULL, stderr=DEVNULL, check=True)


class NsenterRunner(CommandRunner):
    """``nsenter -t PID -a /bin/true`` into a running container of mydocker's."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__("nsenter -t PID -a", lambda: ["nsenter", "-t", str(self.pid), "-a", "/bin/true"])
        self.options = options
        self.pid = 0

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        async with sleeping(**self.options) as container:
            self.pid = container.pid
            yield


def section_exec(bench: Bench, rounds: int, quick: bool) -> dict[str, Any]:
    o = bench.options
    runners: list[Runner] = [
        ExecRunner("exec, asyncio", "asyncio", o),
        ExecRunner("exec, trio", "trio", o),
        ApiRunner("a fresh container (run_container), asyncio", **o),
        NsenterRunner(o),
    ]
    sizes = common.QUICK_SIZES if quick else common.SIZES
    print(f"interleaved: {rounds} round(s); per round and runner: c=1: {sizes[1]}, c=64: {sizes[64]}")
    results = common.interleave(runners, rounds, sizes)
    base = "exec, asyncio"
    rows = [[*common.figures_row(results, r), common.ratio_cell(results, r.name, base)] for r in runners]
    headers = ["/bin/true by", "spawn path", "c=1 median", "c=1 p90", "c=64", f"vs {base}: c=1, c=64"]
    print(table("exec round trip into a running container (host root, default confinement)", headers, rows))
    return results.to_json()


# ---------------------------------------------------------------- files

PATH = "/tmp/bench.bin"
METHODS = {
    "api": "write_file / read_file",
    "exec": "exec: sh -c 'cat > F' / cat F",
    "host": "a host file, anyio.Path (no container)",
}


class FileRunner(Runner):
    """One of ``METHODS`` doing one op (write or read) of one size, each run."""

    def __init__(self, method: str, op: str, size: int, bench: Bench, rootfs: str) -> None:
        self.name = f"{method} {op} {size}"
        self.method, self.op, self.size = method, op, size
        self.data = b"\xa5" * size
        self.options = {"rootfs": rootfs, **bench.options}
        self.host_file = anyio.Path(bench.tmp / "host-file.bin")
        self.weight = 1.0 if size < 1 << 20 else 0.05
        self.container: Container | None = None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        async with sleeping(**self.options) as self.container:
            if self.op == "read":  # the file to read, made the fast way
                await self.container.write_file(PATH, self.data)
                await self.host_file.write_bytes(self.data)
            yield
        await self.host_file.unlink(missing_ok=True)

    async def warm(self) -> None:
        await self.one()

    async def one(self) -> None:
        c = self.container
        assert c is not None
        if self.method == "host":
            if self.op == "write":
                await self.host_file.write_bytes(self.data)
            else:
                got = await self.host_file.read_bytes()
        elif self.method == "api":
            if self.op == "write":
                await c.write_file(PATH, self.data)
            else:
                got = await c.read_file(PATH)
        elif self.op == "write":
            await c.exec(["sh", "-c", f"cat > {PATH}"], input=self.data, check=True)
        else:
            got = (await c.exec(["cat", PATH], stderr=DEVNULL, check=True)).stdout or b""
        if self.op == "read" and len(got) != self.size:
            raise RuntimeError(f"{self.name}: read {len(got)} bytes, not {self.size}")


def section_files(bench: Bench, rounds: int, quick: bool) -> dict[str, Any]:
    rootfs = str(common.busybox_rootfs(bench.tmp))
    sizes = (4096, 100 << 20)
    runners: list[Runner] = [
        FileRunner(m, op, size, bench, rootfs) for m in METHODS for size in sizes for op in ("write", "read")
    ]
    n = 20 if quick else 60  # 4 kB each; 100 MB: 1/20 of it
    print(f"\ninterleaved: {rounds} round(s); per round: {n} of each 4 kB op, {n // 20} of each 100 MB op")
    results: Results = common.interleave(runners, rounds, {1: n})
    headers = ["method"] + [f"{op} {label}" for label in ("4 kB", "100 MB") for op in ("write", "read")]
    rows, out = [], {}
    for m, title in METHODS.items():
        row = [title]
        for size in sizes:
            for op in ("write", "read"):
                t = results.value(f"{m} {op} {size}", 1, "median")
                row.append(ms(t) if size < 1 << 20 else f"{ms(t)} ({size / t / 2**20:,.0f} MB/s)")
                out[f"{m} {op} {size}"] = t * 1e3
        rows.append(row)
    print(table("files in a running container (busybox root; median of each op, ms)", headers, rows))
    return {"median_ms": out}


def main() -> int:
    args = common.arguments(__doc__).parse_args()
    rounds = common.rounds_of(args)
    figures: dict[str, Any] = {"machine": common.machine(), "rounds": rounds}
    with Bench("bench/exec_files.py") as bench:
        print(f"bench/exec_files.py: {common.machine()}")
        common.ensure_tools(["nsenter", "busybox"])
        figures["exec"] = section_exec(bench, rounds, args.quick)
        figures["files"] = section_files(bench, rounds, args.quick)
    common.write_json(args.json, figures)
    return 1 if bench.leaks else 0


if __name__ == "__main__":
    sys.exit(main())
