"""Bridge networks: real bridges, veths and nftables tables (root), and the pure parts
(ports, hosts files, subnets) without root.

Traffic goes only to addresses on this machine: containers on bridges the tests
make, the host's own addresses, and a fake "outside" host in a network namespace a
test makes (its route is checked to stay on the test's veth before anything is
sent). The autouse leak check (conftest) fails a test that leaves an interface
``myd*``, a mydocker nftables table, a changed ip_forward or a named namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from supervisor.errors import SpecError
from supervisor.network import hosts
from supervisor.network.ipam import free_subnet, mac_of, parse_gateway, parse_subnet
from supervisor.spec import ContainerSpec, Port

from . import busybox as bb
from .conftest import ROOT, mydocker_cmd, run_cli

# ------------------------------------------------------------------ pure units (no root)


@pytest.mark.parametrize(
    ("text", "port"),
    [
        ("80", Port(80)),
        ("8080:80", Port(80, 8080)),
        ("127.0.0.1:8080:80/udp", Port(80, 8080, "127.0.0.1", "udp")),
        ("127.0.0.1::80", Port(80, 0, "127.0.0.1")),
    ],
)
def test_parse_port(text: str, port: Port) -> None:
    assert Port.parse(text) == port


@pytest.mark.parametrize(
    "text", ["", "a", "1:2:3:4", "x:80", "80/sctp", "70000", "1.2.3:80:80", "8080:", "0"]
)
def test_parse_port_refuses(text: str) -> None:
    with pytest.raises(SpecError):
        Port.parse(text)


def test_spec_network_rules() -> None:
    assert ContainerSpec(["true"], network="none").network is None
    host = ContainerSpec(["true"], network="host")
    assert host.network is None and "net" not in host.namespaces
    with pytest.raises(SpecError, match="needs a network"):
        ContainerSpec(["true"], ports=(Port(80),))
    with pytest.raises(SpecError, match="network name"):
        ContainerSpec(["true"], network="a-name-far-too-long")
    with pytest.raises(SpecError, match="published twice"):
        ContainerSpec(["true"], network="n", ports=(Port(80, 8080), Port(81, 8080)))
    with pytest.raises(SpecError, match="container name"):
        ContainerSpec(["true"], network="n", name="bad\nname")
    with pytest.raises(SpecError, match="namespace"):
        ContainerSpec(["true"], network="n", namespaces=frozenset({"pid", "mount"}))


def test_hosts_file() -> None:
    text = hosts.hosts(("172.18.0.3", ("web", "abc")), [("172.18.0.10", ("db",)), ("172.18.0.2", ("a", "a"))])
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert lines[-3:] == ["172.18.0.3\tweb abc", "172.18.0.2\ta", "172.18.0.10\tdb"]


def test_resolv_conf_drops_loopback_resolvers() -> None:
    host = "# hi\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.0.0.2\n"
    host += "search example.org\noptions ndots:2\n"
    assert hosts.resolv_conf(host) == "# hi\nnameserver 10.0.0.2\nsearch example.org\noptions ndots:2\n"


def test_subnets_and_gateways() -> None:
    taken = [IPv4Network("172.17.0.0/24"), IPv4Network("172.17.1.0/25"), IPv4Network("10.0.0.0/8")]
    assert free_subnet(taken) == IPv4Network("172.17.2.0/24")
    assert str(parse_subnet("10.9.0.0/16")) == "10.9.0.0/16"
    for bad in ("10.9.0.1/16", "nope", "10.9.0.0/31", "10.0.0.0/33"):
        with pytest.raises(SpecError):
            parse_subnet(bad)
    with pytest.raises(SpecError, match="not a host address"):
        parse_gateway("10.10.0.1", parse_subnet("10.9.0.0/16"))
    with pytest.raises(SpecError, match="not a host address"):
        parse_gateway("10.9.0.0", parse_subnet("10.9.0.0/16"))
    assert mac_of("172.18.0.2") == "02:42:ac:12:00:02"


# ------------------------------------------------------------------ root: helpers

root = pytest.mark.root
needs_nft = pytest.mark.skipif(
    not ROOT or not shutil.which("nft") or not shutil.which("ip"), reason="needs root, nftables and iproute2"
)


@pytest.fixture(scope="session")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bb.build(tmp_path_factory)[0]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A fresh state directory; afterwards no container directory or lease is left."""
    sdir = tmp_path / "state"
    yield sdir
    leftovers = os.listdir(sdir / "containers") if (sdir / "containers").exists() else []
    assert leftovers == [], f"container directories left behind: {leftovers}"
    nets = sdir / "networks"
    leases = [str(p) for p in nets.glob("*/leases/*")] if nets.exists() else []
    assert leases == [], f"leases left behind: {leases}"


def netcmd(state: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_cli("network", "--state-dir", str(state), *args)


def run_in(
    state: Path, rootfs: Path, script: str, *opts: str, **kw: object
) -> subprocess.CompletedProcess[bytes]:
    return run_cli("run", "--state-dir", str(state), "--rootfs", str(rootfs), *opts, "sh", "-c", script, **kw)


def one_line_error(res: subprocess.CompletedProcess[bytes]) -> str:
    err = res.stderr.decode()
    assert res.returncode == 125, (res.returncode, err)
    assert err.count("\n") == 1 and err.startswith("mydocker: "), err
    return err


def inspect(state: Path, name: str) -> dict[str, object]:
    res = netcmd(state, "inspect", name)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)[0]  # type: ignore[no-any-return]


@pytest.fixture
def network(state: Path) -> Iterator[str]:
    """A network made for the test (removed after it)."""
    name = "t" + os.urandom(3).hex()
    res = netcmd(state, "create", name)
    assert res.returncode == 0, res.stderr
    yield name
    res = netcmd(state, "rm", name)
    assert res.returncode == 0, res.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def running(state: Path, rootfs: Path, script: str, *opts: str) -> subprocess.Popen[bytes]:
    """A container in the background (``mydocker run ... sh -c SCRIPT``)."""
    cmd = [
        *mydocker_cmd(),
        "run",
        "--state-dir",
        str(state),
        "--rootfs",
        str(rootfs),
        *opts,
        "sh",
        "-c",
        script,
    ]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def members(state: Path, name: str) -> list[dict[str, object]]:
    return list(inspect(state, name)["Containers"].values())  # type: ignore[union-attr]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


def http_get(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while data := s.recv(4096):
            chunks.append(data)
    return b"".join(chunks)


# ------------------------------------------------------------------ root: networks


@root
@needs_nft
def test_create_ls_inspect_rm(state: Path) -> None:
    name = "t" + os.urandom(3).hex()
    res = netcmd(state, "create", "--subnet", "10.213.7.0/24", "--gateway", "10.213.7.9", name)
    assert res.returncode == 0, res.stderr
    net_id = res.stdout.decode().strip()
    assert len(net_id) == 64
    try:
        assert os.path.exists(f"/sys/class/net/myd-{name}")  # the bridge exists at once, as docker's
        info = inspect(state, name)
        assert info["Id"] == net_id and info["Bridge"] == f"myd-{name}"
        assert info["IPAM"] == {"Config": [{"Subnet": "10.213.7.0/24", "Gateway": "10.213.7.9"}]}
        assert name in netcmd(state, "ls").stdout.decode()
        assert netcmd(state, "ls", "-q").stdout.decode().split() == [name]
        err = one_line_error(netcmd(state, "create", name))
        assert "exists already" in err
        # a subnet that overlaps this one, or a route the host has
        other = "u" + os.urandom(3).hex()
        assert "overlaps" in one_line_error(netcmd(state, "create", "--subnet", "10.213.0.0/16", other))
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            assert f.read().strip() == "1"
    finally:
        res = netcmd(state, "rm", name)
    assert res.returncode == 0 and res.stdout.decode().strip() == name
    assert not os.path.exists(f"/sys/class/net/myd-{name}")
    assert "network" in one_line_error(netcmd(state, "rm", name))


@root
@needs_nft
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--subnet", "10.300.0.0/24", "n1"], "invalid subnet"),
        (["--subnet", "10.213.8.1/24", "n1"], "invalid subnet"),
        (["--subnet", "10.213.8.0/24", "--gateway", "10.213.9.1", "n1"], "not a host address"),
        (["a-name-too-long"], "too long"),
        (["bad/name"], "invalid network name"),
        (["none"], "reserved"),
    ],
)
def test_create_refuses(state: Path, args: list[str], words: str) -> None:
    assert words in one_line_error(netcmd(state, "create", *args))


@root
@needs_nft
def test_run_refuses(state: Path, busybox: Path, network: str) -> None:
    assert "not found" in one_line_error(run_in(state, busybox, "true", "--network", "nosuchnet"))
    assert "needs a network" in one_line_error(run_in(state, busybox, "true", "-p", "8080:80"))
    port = free_port()
    err = one_line_error(
        run_in(state, busybox, "true", "--network", network, "-p", f"{port}:80", "-p", f"{port}:81")
    )
    assert "published twice" in err
    err = one_line_error(
        run_in(state, busybox, "true", "--network", network, "-p", f"{port}:80", "-p", f"127.0.0.1:{port}:81")
    )
    assert "in use" in err
    with socket.socket() as s:  # a host process holds the port
        s.bind(("0.0.0.0", port))
        s.listen()
        assert "in use" in one_line_error(
            run_in(state, busybox, "true", "--network", network, "-p", f"{port}:80")
        )


@root
@needs_nft
def test_container_on_a_network(state: Path, busybox: Path, network: str) -> None:
    gateway = inspect(state, network)["IPAM"]["Config"][0]["Gateway"]  # type: ignore[index]
    script = (
        "ip -4 addr show eth0; ip route; cat /etc/hosts /etc/hostname /etc/resolv.conf; ls /sys/class/net"
    )
    res = run_in(state, busybox, script, "--network", network, "--name", "alpha", "--hostname", "box")
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    assert f"default via {gateway} dev eth0" in out
    lines = out.splitlines()
    own = [line for line in lines if "\talpha box " in line]
    assert own and own[0].split("\t")[0] in out.split("inet ")[1]
    assert "box" in lines and "127.0.0.1\tlocalhost" in lines
    assert not any(line.startswith("nameserver 127.") for line in lines)
    assert lines[-2:] == ["eth0", "lo"]  # only lo and eth0


@root
@needs_nft
def test_two_containers_reach_each_other_by_name_and_address(
    state: Path, busybox: Path, network: str
) -> None:
    server = running(
        state, busybox, "echo hello | nc -l -p 7000; sleep 30", "--network", network, "--name", "srv"
    )
    try:
        wait_for(lambda: len(members(state, network)) == 1)
        address = str(members(state, network)[0]["IPv4Address"]).split("/")[0]
        script = f"cat /etc/hosts; ping -c1 -W5 {address} >/dev/null && echo by-address; nc srv 7000"
        res = run_in(state, busybox, script, "--network", network, "--name", "cli")
        assert res.returncode == 0, res.stderr
        out = res.stdout.decode()
        assert f"{address}\tsrv" in out and "by-address" in out and "hello" in out
    finally:
        stop(server)


@root
@needs_nft
def test_networks_are_isolated(state: Path, busybox: Path, network: str) -> None:
    other = "u" + os.urandom(3).hex()
    assert netcmd(state, "create", other).returncode == 0
    server = running(state, busybox, "sleep 30", "--network", other)
    try:
        wait_for(lambda: len(members(state, other)) == 1)
        address = str(members(state, other)[0]["IPv4Address"]).split("/")[0]
        gateway = inspect(state, network)["IPAM"]["Config"][0]["Gateway"]  # type: ignore[index]
        script = f"ping -c1 -W1 {gateway} >/dev/null && echo gateway; ping -c1 -W2 {address} || echo isolated"
        res = run_in(state, busybox, script, "--network", network)
        assert "gateway" in res.stdout.decode() and "isolated" in res.stdout.decode(), res.stdout
    finally:
        stop(server)
        assert netcmd(state, "rm", other).returncode == 0


@root
@needs_nft
def test_no_spoofing_another_address(state: Path, busybox: Path, network: str) -> None:
    gateway = inspect(state, network)["IPAM"]["Config"][0]["Gateway"]  # type: ignore[index]
    spoofed = gateway.rsplit(".", 1)[0] + ".200"  # type: ignore[union-attr]
    script = (
        f"ping -c1 -W1 {gateway} >/dev/null && echo own-ok; "
        f"ip addr flush dev eth0; ip addr add {spoofed}/24 dev eth0; "
        f"ping -c1 -W1 {gateway} >/dev/null && echo spoofed-ok || echo spoofed-dropped"
    )
    res = run_in(state, busybox, script, "--network", network, "--cap-add", "NET_ADMIN")
    out = res.stdout.decode()
    assert "own-ok" in out and "spoofed-dropped" in out, (out, res.stderr)
    script = (
        "ip link set eth0 down; ip link set eth0 address 02:42:01:02:03:04; ip link set eth0 up; "
        f"ping -c1 -W1 {gateway} >/dev/null && echo mac-ok || echo mac-dropped"
    )
    res = run_in(state, busybox, script, "--network", network, "--cap-add", "NET_ADMIN")
    assert "mac-dropped" in res.stdout.decode(), (res.stdout, res.stderr)


@root
@needs_nft
def test_published_port(state: Path, busybox: Path, network: str) -> None:
    port = free_port()
    script = "mkdir /www; echo page > /www/index.html; httpd -f -p 80 -h /www"
    server = running(state, busybox, script, "--network", network, "-p", f"{port}:80")
    try:
        wait_for(lambda: len(members(state, network)) == 1)
        gateway = str(inspect(state, network)["IPAM"]["Config"][0]["Gateway"])  # type: ignore[index]

        def answers() -> bool:
            try:
                return http_get("127.0.0.1", port).endswith(b"page\n")
            except OSError:
                return False

        wait_for(answers)
        assert http_get(gateway, port).endswith(b"page\n")
        # from another container, through the host's address
        res = run_in(state, busybox, f"wget -q -O - http://{gateway}:{port}/", "--network", network)
        assert res.stdout == b"page\n", res.stderr
        assert "in use" in one_line_error(
            run_in(state, busybox, "true", "--network", network, "-p", f"{port}:80")
        )
    finally:
        stop(server)
    with pytest.raises(OSError):
        http_get("127.0.0.1", port)


@root
@needs_nft
def test_ps_shows_the_host_ports_a_running_container_got(state: Path, busybox: Path, network: str) -> None:
    port = free_port()
    proc = running(
        state,
        busybox,
        "sleep 30",
        "--network",
        network,
        "--name",
        "web",
        "-p",
        f"127.0.0.1:{port}:80",
        "-p",
        "81/udp",
    )
    try:
        wait_for(lambda: len(members(state, network)) == 1)
        res = run_cli("ps", "--state-dir", str(state))
        assert res.returncode == 0, res.stderr
        header, row = res.stdout.decode().splitlines()
        cell = row[header.index("PORTS") : header.index("NAMES")].strip()
        fixed, chosen = cell.split(", ")
        assert fixed == f"127.0.0.1:{port}->80/tcp"
        host, _, rest = chosen.partition(":")
        picked, _, target = rest.partition("->")
        # -p 81/udp: the host port the kernel picked, not 0
        assert host == "0.0.0.0" and int(picked) > 0 and target == "81/udp", cell
    finally:
        stop(proc)
    res = run_cli("ps", "--state-dir", str(state), "-a")
    assert res.returncode == 0 and "->" not in res.stdout.decode()  # no ports once it exited


@root
@needs_nft
def test_rm_refused_while_a_container_runs(state: Path, busybox: Path, network: str) -> None:
    proc = running(state, busybox, "sleep 30", "--network", network, "--name", "busy")
    try:
        wait_for(lambda: len(members(state, network)) == 1)
        err = one_line_error(netcmd(state, "rm", network))
        assert "in use" in err and "busy" in err
    finally:
        stop(proc)
    assert members(state, network) == []


@root
@needs_nft
@pytest.mark.orphans
def test_a_killed_mydocker_is_swept(state: Path, busybox: Path, network: str) -> None:
    port = free_port()
    proc = running(state, busybox, "sleep 60", "--network", network, "-p", f"{port}:80")
    wait_for(lambda: len(members(state, network)) == 1)
    veth = str(members(state, network)[0]["Interface"])
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: not os.path.exists(f"/sys/class/net/{veth}"))  # its namespace went with it
    assert members(state, network) == []  # its lease is a dead owner's
    leases = list((state / "networks" / network / "leases").iterdir())
    assert len(leases) == 1
    tcp_any = subprocess.run(
        ["nft", "list", "map", "ip", "mydocker", "tcp_any"], capture_output=True, text=True
    )
    assert f"{port} :" in tcp_any.stdout
    # the next start sweeps: the port is free again
    res = run_in(state, busybox, "true", "--network", network, "-p", f"{port}:80")
    assert res.returncode == 0, res.stderr
    assert not list((state / "networks" / network / "leases").iterdir())
    tcp_any = subprocess.run(
        ["nft", "list", "map", "ip", "mydocker", "tcp_any"], capture_output=True, text=True
    )
    assert f"{port} :" not in tcp_any.stdout


OUTSIDE = "198.51.100.2"  # TEST-NET-2: on a veth to a namespace this test makes
_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7000)); s.listen(); s.settimeout(30)
print("ready", flush=True)
conn, peer = s.accept()
conn.sendall(b"outside\\n"); conn.close()
print(peer[0], flush=True)
"""


@root
@needs_nft
def test_masquerade_toward_an_outside_host(state: Path, busybox: Path, network: str) -> None:
    if (
        subprocess.run(["ip", "route", "get", OUTSIDE], capture_output=True, text=True).stdout.find(" via ")
        < 0
    ):
        pytest.skip(f"{OUTSIDE} is routed on this host already")
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    veth = "mydtout" + os.urandom(3).hex()
    try:
        time.sleep(0.2)

        def sh(*cmd: str) -> None:
            subprocess.run(cmd, check=True)

        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(holder.pid))
        sh("ip", "addr", "add", "198.51.100.1/24", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        inside = ["nsenter", "-t", str(holder.pid), "-n"]
        sh(*inside, "ip", "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
        sh(*inside, "ip", "link", "set", "eth0", "up")
        route = json.loads(subprocess.run(["ip", "-j", "route", "get", OUTSIDE], capture_output=True).stdout)
        assert route[0]["dev"] == veth  # the traffic stays on this machine
        server = subprocess.Popen(
            [*inside, sys.executable, "-c", _SERVER, OUTSIDE], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            res = run_in(state, busybox, f"nc {OUTSIDE} 7000", "--network", network)
            assert res.stdout == b"outside\n", res.stderr
            assert (
                server.stdout.readline().strip() == "198.51.100.1"
            )  # the host's address, not the container's
        finally:
            server.kill()
            server.wait()
    finally:
        holder.kill()
        holder.wait()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


@root
@needs_nft
def test_network_none_host_and_the_default_bridge(state: Path, busybox: Path) -> None:
    res = run_in(state, busybox, "ls /sys/class/net", "--network", "none")
    assert res.stdout.split() == [b"lo"]
    res = run_cli("run", "--network", "host", "ls", "/sys/class/net")
    assert sorted(res.stdout.split()) == sorted(os.fsencode(n) for n in os.listdir("/sys/class/net"))
    if os.path.exists("/sys/class/net/myd-bridge"):
        pytest.skip("a network called bridge exists on this host already")
    try:
        res = run_in(state, busybox, "ip -4 addr show eth0", "--network", "bridge")
        assert res.returncode == 0 and b"inet " in res.stdout, res.stderr
        assert netcmd(state, "ls", "-q").stdout.split() == [b"bridge"]
    finally:
        assert netcmd(state, "rm", "bridge").returncode == 0


# ------------------------------------------------------------------ root: the library


@root
@needs_nft
@pytest.mark.anyio
async def test_library(state: Path, busybox: Path) -> None:
    from supervisor import open_container, run_container
    from supervisor.network import create_network, list_networks, remove_network

    name = "t" + os.urandom(3).hex()
    net = create_network(name, state_dir=str(state))
    try:
        assert [n.name for n in list_networks(str(state))] == [name]
        async with await open_container(
            ["sh", "-c", "ip -4 addr show eth0; cat /etc/hosts"],
            network=name,
            rootfs=str(busybox),
            state_dir=str(state),
            ports=(Port(80),),
        ) as c:
            assert c.endpoint is not None
            assert c.endpoint.ports[0].host_port > 0  # the one the kernel chose
            out = await c.stdout.receive(65536)
            assert await c.wait() == 0
        assert f"inet {c.endpoint.address}/" in out.decode()
        # without a root filesystem: eth0 all the same (the host's /etc files)
        result = await run_container(
            ["ip", "-o", "-4", "addr", "show", "eth0"], network=name, state_dir=str(state)
        )
        assert result.returncode == 0 and "inet " in result.stdout.decode(), result
        assert IPv4Network(net.subnet).prefixlen == 24
    finally:
        remove_network(name, state_dir=str(state))
