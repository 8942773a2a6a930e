"""The device cgroup: rules, the BPF program (run here by a small interpreter), the v1
writes, and, as root, real confinement through cgroup v2 and through cgroup v1.

The v2 root tests run on whatever the host has; on a hybrid host they show that a
device program on the cgroup2 (``unified``) directory confines a process whose v1
devices cgroup allows everything.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import random
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from supervisor import _linux, cgroups, devices
from supervisor.devices import DEFAULT_RULES, DeviceRule, parse_rule
from supervisor.errors import SpecError, StartError

# ---------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("c 1:3 rwm", DeviceRule("c", 1, 3, "rwm")),
        ("b *:* m", DeviceRule("b", None, None, "m")),
        ("c 136:* rw", DeviceRule("c", 136, None, "rw")),
        ("a *:* rwm", DeviceRule("a")),
        ("c 10:200 mwr", DeviceRule("c", 10, 200, "rwm")),
        ("  b 7:0  r ", DeviceRule("b", 7, 0, "r")),
        ("c 4095:1048575 w", DeviceRule("c", 4095, 1048575, "w")),
    ],
)
def test_parse_rule(text: str, rule: DeviceRule) -> None:
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    "text",
    [
        "",
        "c",
        "c 1:3",
        "x 1:3 rwm",
        "c 1-3 rwm",
        "c 1:3:4 rwm",
        "c 1:3 rwx",
        "c 1:3 ",
        "c -1:3 r",
        "c 0x1:3 r",
        "c 4096:0 r",
        "c 1:1048576 r",
        "c 1:3 rwm extra",
        "c ¹:3 r",
    ],
)
def test_parse_rule_refuses_in_one_line(text: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_rule(text)
    assert "\n" not in str(e.value)
    assert repr(text) in str(e.value)


def test_rule_formats_as_docker_writes_it_and_parses_back() -> None:
    for rule in [*DEFAULT_RULES, DeviceRule("a"), DeviceRule("b", 254, 0, "r", allow=False)]:
        assert parse_rule(str(rule), allow=rule.allow) == rule
    assert str(DeviceRule("c", 136, None, "wr")) == "c 136:* rw"
    assert parse_rule("c 1:3 r", allow=False).allow is False


def test_rule_fields_are_checked() -> None:
    for bad in [
        ("d", 1, 3, "r"),
        ("c", -1, 3, "r"),
        ("c", 1, 1 << 20, "r"),
        ("c", 1, 3, ""),
        ("c", 1, 3, "x"),
    ]:
        with pytest.raises(SpecError):
            DeviceRule(*bad)  # type: ignore[arg-type]


def test_default_rules_are_dockers_without_tun() -> None:
    text = {str(r) for r in DEFAULT_RULES}
    assert text == {
        "c *:* m",
        "b *:* m",
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:1 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
    }
    assert all(r.allow for r in DEFAULT_RULES)
    assert devices.container_rules() == DEFAULT_RULES
    tun = parse_rule("c 10:200 rwm")
    assert devices.container_rules(extra=[tun])[-1] == tun
    assert devices.resolve(devices.container_rules(privileged=True)) == devices.DevicePolicy(True, ())


# ---------------------------------------------------------------- resolve


def test_resolve_merges_and_takes_back_exactly() -> None:
    rules = [parse_rule("c 1:3 r"), parse_rule("c 1:3 w"), parse_rule("c 1:3 r", allow=False)]
    assert devices.resolve(rules).exceptions == (DeviceRule("c", 1, 3, "w"),)
    rules.append(parse_rule("c 1:3 w", allow=False))
    assert devices.resolve(rules).exceptions == ()


def test_resolve_a_rules() -> None:
    # 'a *:* rwm' starts over; any other 'a' rule is a 'c' and a 'b' rule
    p = devices.resolve([*DEFAULT_RULES, DeviceRule("a"), parse_rule("a 7:* r", allow=False)])
    assert p == devices.DevicePolicy(
        True, (DeviceRule("c", 7, None, "r", False), DeviceRule("b", 7, None, "r", False))
    )
    p = devices.resolve([DeviceRule("a"), DeviceRule("a", allow=False), parse_rule("a *:* m")])
    assert p == devices.DevicePolicy(
        False, (DeviceRule("c", None, None, "m"), DeviceRule("b", None, None, "m"))
    )


@pytest.mark.parametrize(
    "deny",
    ["c 1:3 m", "c *:* rwm", "c 136:5 rw", "a 5:0 m"],
)
def test_resolve_refuses_what_v1_would_ignore(deny: str) -> None:
    # each overlaps a default allow that names other devices: v1 would keep allowing
    with pytest.raises(SpecError, match="cgroup v1 would silently ignore"):
        devices.resolve([*DEFAULT_RULES, parse_rule(deny, allow=False)])


def test_resolve_accepts_takebacks_v1_can_do() -> None:
    p = devices.resolve(
        [*DEFAULT_RULES, parse_rule("c 1:3 rw", allow=False), parse_rule("c 4:* r", allow=False)]
    )
    assert DeviceRule("c", 1, 3, "m") in p.exceptions
    assert not p.allows("c", 1, 3, "r") and p.allows("c", 1, 3, "m")


# ---------------------------------------------------------------- a BPF interpreter

CTX = "ctx"  # r1 at entry: the pointer to struct bpf_cgroup_dev_ctx
MASK64 = (1 << 64) - 1


def run_bpf(code: bytes, type: str, major: int, minor: int, access: str) -> int:
    """Run a device program the way the kernel would for one request; returns r0.

    Decodes struct bpf_insn itself (not with the generator's encoder) and knows just
    the opcodes a device program needs; anything else, a backward jump, running off
    the end or reading an unset register fails the test, as the verifier would."""
    assert len(code) % 8 == 0
    insns = [struct.unpack("<BBhi", code[i : i + 8]) for i in range(0, len(code), 8)]
    acc = sum({"m": 1, "r": 2, "w": 4}[c] for c in access)
    ctx = struct.pack("<III", {"b": 1, "c": 2}[type] | acc << 16, major, minor)
    regs: dict[int, int | str] = {1: CTX, 10: "fp"}

    def reg(n: int) -> int:
        value = regs.get(n)
        assert isinstance(value, int), f"r{n} read before it is set ({value})"
        return value

    pc = 0
    while True:
        assert 0 <= pc < len(insns), "ran off the program"
        op, regbyte, off, imm = insns[pc]
        dst, src = regbyte & 0x0F, regbyte >> 4
        cls = op & 0x07
        pc += 1
        if op == 0x61:  # LDX | W | MEM: dst = *(u32 *)(src + off)
            assert regs.get(src) == CTX and off in (0, 4, 8), "load from outside the context"
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif cls in (0x04, 0x07):  # ALU (32-bit: result zero-extended) / ALU64
            operand = reg(src) if op & 0x08 else imm & MASK64
            alu = op & 0xF0
            if alu == 0xB0:  # MOV
                value = operand
            elif alu == 0x50:  # AND
                value = reg(dst) & operand
            elif alu == 0x70:  # RSH
                value = (reg(dst) & (0xFFFFFFFF if cls == 0x04 else MASK64)) >> (operand & 63)
            else:
                raise AssertionError(f"ALU op {op:#x} not expected")
            regs[dst] = value & (0xFFFFFFFF if cls == 0x04 else MASK64)
        elif op == 0x95:  # EXIT
            return reg(0)
        elif cls == 0x05:  # JMP (64-bit compares)
            operand = reg(src) if op & 0x08 else imm & MASK64
            taken = {0x10: reg(dst) == operand, 0x50: reg(dst) != operand}.get(op & 0xF0)
            assert taken is not None, f"jump op {op:#x} not expected"
            assert off >= 0, "backward jump"
            if taken:
                pc += off
        else:
            raise AssertionError(f"opcode {op:#x} not expected")


def allowed(rules: object, type: str, major: int, minor: int, access: str) -> bool:
    return run_bpf(devices.bpf_program(rules), type, major, minor, access) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("request_", "ok"),
    [
        (("c", 1, 3, "rw"), True),  # /dev/null
        (("c", 1, 3, "r"), True),
        (("c", 1, 5, "w"), True),  # /dev/zero
        (("c", 1, 9, "r"), True),  # /dev/urandom
        (("c", 5, 2, "rw"), True),  # /dev/ptmx
        (("c", 136, 5, "rw"), True),  # /dev/pts/5
        (("c", 136, 0, "m"), True),
        (("b", 254, 0, "m"), True),  # mknod of the host's disk: allowed
        (("b", 254, 0, "r"), False),  # opening it: not
        (("b", 254, 0, "w"), False),
        (("b", 254, 0, "rw"), False),
        (("b", 7, 0, "r"), False),  # loop0
        (("c", 1, 1, "r"), False),  # /dev/mem
        (("c", 1, 11, "r"), False),  # /dev/kmsg
        (("c", 10, 200, "rw"), False),  # /dev/net/tun: not by default
        (("c", 10, 229, "rw"), False),  # /dev/fuse
        (("c", 4095, 1048575, "m"), True),
        (("c", 137, 3, "r"), False),
        (("b", 1, 3, "r"), False),  # the numbers of null, but a block device
    ],
)
def test_default_program(request_: tuple[str, int, int, str], ok: bool) -> None:
    assert allowed(DEFAULT_RULES, *request_) is ok
    assert devices.resolve(DEFAULT_RULES).allows(*request_) is ok


def test_privileged_program_allows_everything() -> None:
    code = devices.bpf_program(devices.container_rules(privileged=True))
    assert len(code) == 16  # r0 = 1; exit
    for t, acc in itertools.product("bc", ["r", "w", "rw", "m"]):
        assert allowed([devices.ALLOW_ALL], t, 254, 0, acc)


def test_deny_all_program() -> None:
    assert len(devices.bpf_program([])) == 16
    assert not allowed([], "c", 1, 3, "r")


def test_a_rules_and_partial_access_in_the_program() -> None:
    rules = [parse_rule("a 7:* r")]
    assert allowed(rules, "b", 7, 3, "r") and allowed(rules, "c", 7, 0, "r")
    assert not allowed(rules, "b", 7, 3, "rw") and not allowed(rules, "b", 8, 3, "r")
    # allow-all minus writes to the disk: a read-write open is refused, a read is not
    rules = [devices.ALLOW_ALL, parse_rule("b 254:0 w", allow=False)]
    assert not allowed(rules, "b", 254, 0, "rw") and not allowed(rules, "b", 254, 0, "w")
    assert allowed(rules, "b", 254, 0, "r") and allowed(rules, "b", 254, 1, "w")


def test_extra_rule_opens_one_device() -> None:
    rules = devices.container_rules(extra=[parse_rule("c 10:200 rwm")])
    assert allowed(rules, "c", 10, 200, "rw") and not allowed(rules, "c", 10, 201, "rw")


def test_default_program_shape() -> None:
    code = devices.bpf_program(DEFAULT_RULES)
    # 6 to load the request; per block its tests and 2 for the verdict: 4 + 2 for each
    # mknod-only wildcard, 3 + 2 for each of the 8 exact devices, 2 + 2 for pts; 2 for
    # the default
    assert len(code) // 8 == 6 + 2 * 6 + 8 * 5 + 4 + 2 == 64
    assert code[-16:] == devices.bpf_program([])  # ends in "deny"


# ---------------------------------------------------------------- the kernel's v1, as a model


class V1Model:
    """The kernel's v1 devices cgroup (security/device_cgroup.c), for what the writes
    do: "a" resets the default; a rule on the default's side removes the exception
    with exactly its devices (its access bits), else it adds or merges one."""

    def __init__(self) -> None:
        self.default_allow = True  # a fresh cgroup below an allow-all root
        self.ex: dict[tuple[str, int | None, int | None], set[str]] = {}

    def write(self, file: str, line: str) -> None:
        allow = file == "devices.allow"
        if line.startswith("a"):
            self.default_allow, self.ex = allow, {}
            return
        t, nums, acc = line.split()
        major, minor = (None if n == "*" else int(n) for n in nums.split(":"))
        key = (t, major, minor)
        if allow == self.default_allow:
            if key in self.ex:
                self.ex[key] -= set(acc)
                if not self.ex[key]:
                    del self.ex[key]
        else:
            self.ex.setdefault(key, set()).update(acc)

    def allows(self, t: str, major: int, minor: int, access: str) -> bool:
        want = set(access)
        for (et, emaj, emin), eacc in self.ex.items():
            if et != t or emaj not in (None, major) or emin not in (None, minor):
                continue
            if self.default_allow and want & eacc:
                return False
            if not self.default_allow and want <= eacc:
                return True
        return self.default_allow


def test_v1_writes_for_the_default_rules() -> None:
    assert devices.v1_writes(DEFAULT_RULES) == [
        ("devices.deny", "a"),
        ("devices.allow", "c *:* m"),
        ("devices.allow", "b *:* m"),
        ("devices.allow", "c 1:3 rwm"),
        ("devices.allow", "c 1:5 rwm"),
        ("devices.allow", "c 1:7 rwm"),
        ("devices.allow", "c 1:8 rwm"),
        ("devices.allow", "c 1:9 rwm"),
        ("devices.allow", "c 5:0 rwm"),
        ("devices.allow", "c 5:1 rwm"),
        ("devices.allow", "c 5:2 rwm"),
        ("devices.allow", "c 136:* rwm"),
    ]
    assert devices.v1_writes([devices.ALLOW_ALL]) == [("devices.allow", "a")]
    deny_one = [devices.ALLOW_ALL, parse_rule("b 254:0 rw", allow=False)]
    assert devices.v1_writes(deny_one) == [("devices.allow", "a"), ("devices.deny", "b 254:0 rw")]


class RecordingFS:
    def __init__(self, fail_on: str = "") -> None:
        self.writes: list[tuple[str, str]] = []
        self.fail_on = fail_on

    def write(self, path: str, value: str) -> None:
        if value == self.fail_on:
            raise OSError(errno.EPERM, f"write {value!r} to {path}: Operation not permitted")
        self.writes.append((path, value))


def test_apply_v1_writes_through_the_fs() -> None:
    fs = RecordingFS()
    devices.apply_v1(fs, "/cg/x", DEFAULT_RULES)
    assert fs.writes[:2] == [("/cg/x/devices.deny", "a"), ("/cg/x/devices.allow", "c *:* m")]
    assert len(fs.writes) == 12
    with pytest.raises(StartError) as e:
        devices.apply_v1(RecordingFS(fail_on="c 1:3 rwm"), "/cg/x", DEFAULT_RULES)
    assert e.value.errno == errno.EPERM and "c 1:3 rwm" in str(e.value) and "/cg/x" in str(e.value)


def random_rules(rng: random.Random) -> list[DeviceRule]:
    rules = []
    for _ in range(rng.randint(0, 7)):
        if rng.random() < 0.1:
            rules.append(DeviceRule("a", allow=rng.random() < 0.5))
            continue
        rules.append(
            DeviceRule(
                rng.choice("cb"),
                rng.choice([None, 1, 7]),
                rng.choice([None, 0, 3]),
                "".join(c for c in "rwm" if rng.random() < 0.6) or "r",
                allow=rng.random() < 0.7,
            )
        )
    return rules


def test_program_v1_writes_and_policy_agree_with_the_kernels_v1() -> None:
    """For random rule lists: the BPF program, the v1 writes and ``DevicePolicy.allows``
    all say what the kernel's v1 cgroup says after the rules themselves are written
    one by one; the lists ``resolve`` refuses are those where v1 would differ."""
    rng = random.Random(1234)
    requests = list(itertools.product("cb", [1, 7, 9], [0, 3, 5], ["r", "w", "m", "rw"]))
    checked = refused = 0
    for _ in range(600):
        rules = random_rules(rng)
        raw = V1Model()
        raw.write("devices.deny", "a")
        for r in rules:
            raw.write("devices.allow" if r.allow else "devices.deny", "a" if r.resets else str(r))
        try:
            policy = devices.resolve(rules)
        except SpecError:
            refused += 1
            continue
        written = V1Model()
        for file, line in devices.v1_writes(rules):
            written.write(file, line)
        code = devices.bpf_program(rules)
        for req in requests:
            want = raw.allows(*req)
            assert policy.allows(*req) is want, (rules, req)
            assert written.allows(*req) is want, (rules, req)
            assert (run_bpf(code, *req) == 1) is want, (rules, req)
        checked += 1
    assert checked > 300 and refused > 20  # both kinds were exercised


# ---------------------------------------------------------------- as root: real cgroups

root = pytest.mark.root

CHILD = r"""
import json, os, stat, sys
sys.stdin.buffer.read(1)  # wait until the parent has placed us
d = sys.argv[1]
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = 0
    except OSError as e:
        out[name] = e.errno
def mknod(name, kind, major, minor):
    attempt("mknod " + name, lambda: os.mknod(os.path.join(d, name), kind | 0o600, os.makedev(major, minor)))
def open_(name, flags, path=None):
    attempt(f"open {name} {flags}", lambda: os.close(os.open(path or os.path.join(d, name), flags)))
mknod("disk", stat.S_IFBLK, 7, 0)  # loop0: a block device that opens when unconfined
mknod("null", stat.S_IFCHR, 1, 3)
mknod("mem", stat.S_IFCHR, 1, 1)
mknod("kmsg", stat.S_IFCHR, 1, 11)
open_("disk", os.O_RDONLY)
open_("disk", os.O_WRONLY)
open_("null", os.O_RDWR)
open_("mem", os.O_RDONLY)
open_("kmsg", os.O_RDONLY)
open_("/dev/null", os.O_RDWR, "/dev/null")
open_("/dev/zero", os.O_RDONLY, "/dev/zero")
print(json.dumps(out))
"""


def run_child(tmp: str, cgroup_dirs: list[str]) -> dict[str, int]:
    """Start a Python child, write its pid into each ``cgroup.procs``, let it make and
    open device nodes in ``tmp``; its results by check (0 or an errno).

    The block device is loop0 (7:0), not the root disk: a sandbox may refuse opening
    its mounted root disk on its own (this test host does, EPERM with no device rules
    at all), which would prove nothing about ours."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, tmp],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        for d in cgroup_dirs:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(proc.pid))
        out, _ = proc.communicate(b"1", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for name in ("disk", "null", "mem", "kmsg"):
            try:
                os.unlink(os.path.join(tmp, name))
            except FileNotFoundError:
                pass
    assert proc.returncode == 0
    return json.loads(out)


@pytest.fixture
def node_dir(tmp_path: object) -> str:
    path = str(tmp_path)
    if os.statvfs(path).f_flag & os.ST_NODEV:
        pytest.skip(f"{path} is on a nodev mount: device nodes there never open")
    return path


def make_cgroup(parent: str | None, name: str) -> Iterator[str]:
    if parent is None:
        pytest.skip("no such cgroup hierarchy here")
    d = os.path.join(parent, name)
    os.mkdir(d)
    try:
        yield d
    finally:
        # our children are reaped by now (run_child waits); rmdir also detaches programs
        os.rmdir(d)


@pytest.fixture
def v2_dir() -> Iterator[str]:
    v2 = cgroups.current_layout().v2
    yield from make_cgroup(v2.parent_dir(None) if v2 else None, f"mydevtest-{os.getpid()}")


@pytest.fixture
def v1_devices_dir() -> Iterator[str]:
    h = cgroups.current_layout().v1_for("devices")
    yield from make_cgroup(h.parent_dir(None) if h else None, f"mydevtest-{os.getpid()}")


CONFINED = {
    "mknod disk": 0,  # creating a block device node is allowed (b *:* m) ...
    "mknod null": 0,
    "mknod mem": 0,
    "mknod kmsg": 0,
    f"open disk {os.O_RDONLY}": errno.EPERM,  # ... opening it is not
    f"open disk {os.O_WRONLY}": errno.EPERM,
    f"open null {os.O_RDWR}": 0,
    f"open mem {os.O_RDONLY}": errno.EPERM,
    f"open kmsg {os.O_RDONLY}": errno.EPERM,
    f"open /dev/null {os.O_RDWR}": 0,
    f"open /dev/zero {os.O_RDONLY}": 0,
}


@root
def test_unconfined_control(node_dir: str) -> None:
    # the same child outside any device rules: the nodes open (so EPERM below is ours);
    # /dev/mem only if the kernel has it (ENXIO: no driver)
    if not os.path.exists("/dev/loop0"):
        pytest.skip("no loop driver: the block device checks would prove nothing")
    out = run_child(node_dir, [])
    assert out.pop(f"open mem {os.O_RDONLY}") in (0, errno.ENXIO)
    assert set(out.values()) == {0}, out


@root
def test_v2_program_confines_the_cgroup(node_dir: str, v2_dir: str) -> None:
    devices.apply_v2(v2_dir, DEFAULT_RULES)
    fd = os.open(v2_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags, ids = _linux.bpf_prog_query(fd, _linux.BPF_CGROUP_DEVICE)
    finally:
        os.close(fd)
    assert flags == _linux.BPF_F_ALLOW_MULTI and len(ids) == 1
    assert run_child(node_dir, [v2_dir]) == CONFINED


@root
def test_v2_program_confines_even_where_v1_devices_allows_all(node_dir: str, v2_dir: str) -> None:
    # a hybrid host: our v1 devices cgroup allows everything, yet the v2 program decides
    h = cgroups.current_layout().v1_for("devices")
    if h is None:
        pytest.skip("no v1 devices controller: not a hybrid host")
    own = h.parent_dir(None)
    assert own is not None
    with open(os.path.join(own, "devices.list")) as f:
        if f.read().split("\n")[0] != "a *:* rwm":
            pytest.skip("our v1 devices cgroup does not allow everything: it would prove nothing")
    devices.apply_v2(v2_dir, DEFAULT_RULES)
    assert run_child(node_dir, [v2_dir])[f"open disk {os.O_RDONLY}"] == errno.EPERM


@root
def test_v2_extra_rule_and_privileged(node_dir: str, v2_dir: str) -> None:
    # privileged attaches nothing at all
    devices.apply_v2(v2_dir, devices.container_rules(privileged=True))
    fd = os.open(v2_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _linux.bpf_prog_query(fd, _linux.BPF_CGROUP_DEVICE)[1] == []
    finally:
        os.close(fd)
    # kmsg allowed by one extra rule; mem still not
    devices.apply_v2(v2_dir, devices.container_rules(extra=[parse_rule("c 1:11 r")]))
    out = run_child(node_dir, [v2_dir])
    assert out[f"open kmsg {os.O_RDONLY}"] == 0 and out[f"open mem {os.O_RDONLY}"] == errno.EPERM


@root
def test_v2_deny_all_refuses_mknod_too(node_dir: str, v2_dir: str) -> None:
    devices.apply_v2(v2_dir, [])
    out = run_child(node_dir, [v2_dir])
    assert out["mknod disk"] == out["mknod null"] == errno.EPERM
    assert out[f"open /dev/null {os.O_RDWR}"] == errno.EPERM


@root
def test_v2_ancestor_program_still_applies(node_dir: str, v2_dir: str) -> None:
    """ALLOW_MULTI all the way: a program above ours keeps narrowing (here it refuses
    /dev/null, which ours allows)."""
    devices.apply_v2(v2_dir, [devices.ALLOW_ALL, parse_rule("c 1:3 rwm", allow=False)])
    child = os.path.join(v2_dir, "c")
    os.mkdir(child)
    try:
        devices.apply_v2(child, DEFAULT_RULES)
        out = run_child(node_dir, [child])
    finally:
        os.rmdir(child)
    assert out[f"open /dev/null {os.O_RDWR}"] == errno.EPERM
    assert out[f"open /dev/zero {os.O_RDONLY}"] == 0
    assert out[f"open disk {os.O_RDONLY}"] == errno.EPERM


@root
def test_v1_devices_cgroup_confines(node_dir: str, v1_devices_dir: str) -> None:
    devices.apply_v1(cgroups.CgroupFS(), v1_devices_dir, DEFAULT_RULES)
    with open(os.path.join(v1_devices_dir, "devices.list")) as f:
        listed = f.read().split()
    assert "c 1:3 rwm".split() == listed[listed.index("1:3") - 1 : listed.index("1:3") + 2]
    assert run_child(node_dir, [v1_devices_dir]) == CONFINED


@root
def test_verifier_accepts_generated_programs() -> None:
    rng = random.Random(7)
    lists = [
        list(DEFAULT_RULES),
        [devices.ALLOW_ALL],
        [],
        [devices.ALLOW_ALL, parse_rule("b 254:0 w", False)],
    ]
    lists += [random_rules(rng) for _ in range(40)]
    loaded = 0
    for rules in lists:
        try:
            fd = devices.load_program(rules)
        except SpecError:
            continue
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        os.close(fd)
        loaded += 1
    assert loaded > 20


@root
def test_verifier_log_in_the_error() -> None:
    exit_only = struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 never set
    with pytest.raises(OSError) as e:
        _linux.bpf_prog_load(_linux.BPF_PROG_TYPE_CGROUP_DEVICE, exit_only, devices.LICENSE)
    assert e.value.errno == errno.EACCES
    assert "BPF_PROG_LOAD" in str(e.value) and "R0 !read_ok" in str(e.value)


@root
def test_cache_shares_one_program_and_closes(v2_dir: str) -> None:
    with devices.ProgramCache() as cache:
        fd = cache.program_fd(DEFAULT_RULES)
        assert cache.program_fd([*DEFAULT_RULES, DEFAULT_RULES[2]]) == fd  # the same program
        assert len(cache) == 1
        assert cache.program_fd([devices.ALLOW_ALL]) is None  # nothing to load or attach
        assert len(cache) == 1
        devices.apply_v2(v2_dir, DEFAULT_RULES, cache)
        sub = os.path.join(v2_dir, "c")
        os.mkdir(sub)
        try:
            devices.apply_v2(sub, DEFAULT_RULES, cache)
        finally:
            os.rmdir(sub)
    with pytest.raises(OSError):
        os.fstat(fd)
    assert len(cache) == 0


@root
def test_apply_v2_errors_name_the_directory() -> None:
    with pytest.raises(StartError, match="/nonexistent/cg"):
        devices.apply_v2("/nonexistent/cg", DEFAULT_RULES)
    with pytest.raises(StartError, match="BPF_PROG_ATTACH"):
        devices.apply_v2("/", DEFAULT_RULES)  # not a cgroup directory
