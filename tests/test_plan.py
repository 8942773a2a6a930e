"""The child's plan, without a child: what ``init.prepare`` lines up for every
combination of options, in order, with the arguments that matter.

Nothing is cloned and no step is run: each case builds a ``ContainerSpec``, digests
it with ``init.child_spec`` as the supervisor does (root filesystem steps from
``mounts.child_ops``, a ``Confinement``, an ``--init`` path, a cgroup placement to
wait for, no user namespace, a rootless one or ``--userns auto``'s), numbers its fds
as the spawn helper would (``init.child_plan``) and compares the prepared steps with a
model of the rules written out below (``expected_names``), then checks the order
invariants and key arguments one by one. An exec into a running container
(``init.exec_child_spec``) is checked the same way. The fds are made-up numbers:
nothing here opens them. Runs as any user.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
from dataclasses import dataclass

import pytest

from supervisor import _linux, init, mounts, spawn
from supervisor.spec import DEFAULT_PATH, ContainerSpec, Mount

NAMESPACES = ("pid", "mount", "uts", "ipc", "net", "cgroup")
NS_SETS = [frozenset(c) for r in range(len(NAMESPACES) + 1) for c in itertools.combinations(NAMESPACES, r)]

#: the cgroup.procs files of a container's v1 directories
PROCS = ("/sys/fs/cgroup/memory/m/cgroup.procs", "/sys/fs/cgroup/pids/m/cgroup.procs")

COMMAND = ("sh", "-c", "echo hi")
ROOTFS = "/images/busybox"
DIRS = mounts.ContainerDirs("/state/lower", "/state/c/upper", "/state/c/work", "/state/c/rootfs")
HOST_INIT = "/usr/bin/tini-static"

# fd numbers as the process that clones sees them
STDIN, STDOUT, STDERR, ERRPIPE, SYNC, CONSOLE, NETNS, SUPERVISOR, PTY, TARGET = range(10, 20)

#: one BPF instruction (RET ALLOW): the step is built (a ctypes struct), never loaded
PROGRAM = b"\x06\x00\x00\x00\x00\x00\xff\x7f"
LAST_CAP = 40
#: docker's 14 capabilities as a mask: chown, dac_override, fowner, fsetid, kill,
#: setgid, setuid, setpcap, net_bind_service, net_raw, sys_chroot, mknod,
#: audit_write, setfcap
DOCKER_CAPS = sum(1 << c for c in (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31))


def _confinement(uid: int, seccomp: bool, nnp: bool) -> init.Confinement:
    return init.Confinement(
        bounding=DOCKER_CAPS,
        effective=DOCKER_CAPS if uid == 0 else 0,
        permitted=DOCKER_CAPS if uid == 0 else 0,
        uid=uid,
        gid=uid,
        groups=() if uid == 0 else (uid, 27),
        last_cap=LAST_CAP,
        seccomp=PROGRAM if seccomp else None,
        seccomp_flags=0,
        no_new_privs=nnp,
    )


CONFINEMENTS: dict[str, init.Confinement | None] = {
    "none": None,
    "root": _confinement(0, seccomp=True, nnp=False),
    "root-nnp": _confinement(0, seccomp=True, nnp=True),
    "root-unconfined": _confinement(0, seccomp=False, nnp=False),
    "user": _confinement(1000, seccomp=True, nnp=False),
    "user-nnp": _confinement(1000, seccomp=True, nnp=True),
    "user-nnp-unconfined": _confinement(1000, seccomp=False, nnp=True),
    # rootless with only the user mapped: the user namespace refuses setgroups
    "user-no-setgroups": _confinement(1000, seccomp=True, nnp=False)._replace(groups=None),
}


@dataclass(frozen=True)
class Case:
    namespaces: frozenset[str]
    tty: bool
    rootfs: bool
    cwd: str | None
    init: bool
    confinement: str
    #: without a tty: the stdio fds as separate pipes, or already 0, 1 and 2
    inherited_stdio: bool
    #: cgroup v1 directories: the child writes itself into them before it goes on
    placement: bool
    #: 0: no user namespace; 1: cloned into one (rootless); 2: ``--userns auto``
    userns: int
    #: a network namespace from the helper's pool (lo up already)
    netns: bool
    #: on a network (``--network NAME``): the supervisor plugs it in while it waits
    network: bool
    supervisor: bool

    @property
    def sync(self) -> bool:
        # what container.py does: a sync pipe whenever the child must wait for it
        return self.userns != 0 or self.network

    @property
    def console(self) -> bool:
        # what container.py does: -t with a root filesystem opens the pty in the child
        return self.tty and self.rootfs

    @property
    def conf(self) -> init.Confinement | None:
        return CONFINEMENTS[self.confinement]


#: the options that move steps around with the namespaces: a tty (and with a root
#: filesystem, the console), a root filesystem, a user namespace (none, rootless,
#: --userns auto), the network namespace (made by the clone, from the helper's pool,
#: or made by the clone and plugged into a network), a supervisor pidfd
MAJOR = list(
    itertools.product((False, True), (False, True), (0, 1, 2), ("own", "pool", "plugged"), (False, True))
)
#: the options whose steps do not depend on the namespaces: the working directory, the
#: init, the stdio fds' numbers, a cgroup placement to wait for, the confinement
MINOR = list(
    itertools.product((None, "/work dir"), (False, True), (False, True), (False, True), CONFINEMENTS)
)


def cases(namespaces: frozenset[str], every_minor: bool = False) -> list[Case]:
    """The valid combinations for one set of namespaces: every major option, with the
    minor ones in turn (spread over the namespace sets, so that each minor combination
    meets many major ones); ``every_minor``: every minor combination with each major
    one, for a pooled network namespace (if any) and a supervisor pidfd."""
    out = []
    offset = NS_SETS.index(namespaces) * len(MAJOR)
    for k, (tty, rootfs, userns, net, sup) in enumerate(MAJOR):
        if rootfs and "mount" not in namespaces:
            continue  # ContainerSpec refuses it
        if net != "own" and "net" not in namespaces:
            continue  # a pool's namespace or a network: only with a network namespace
        if every_minor and (net != ("pool" if "net" in namespaces else "own") or not sup):
            continue
        netns, network = net == "pool", net == "plugged"
        for cwd, with_init, inherited, placement, conf in (
            MINOR if every_minor else [MINOR[(offset + k) % len(MINOR)]]
        ):
            if inherited and tty:
                continue  # with a tty the three are the pty
            out.append(
                Case(
                    namespaces,
                    tty,
                    rootfs,
                    cwd,
                    with_init,
                    conf,
                    inherited,
                    placement,
                    userns,
                    netns,
                    network,
                    sup,
                )
            )
    return out


@functools.cache
def spec_of(
    namespaces: frozenset[str], tty: bool, rootfs: bool, cwd: str | None, network: bool
) -> ContainerSpec:
    extra: dict[str, object] = {"network": "bridge"} if network else {}
    if rootfs:
        extra["rootfs"] = ROOTFS
        extra["mounts"] = (Mount("/data", "/srv/data"), Mount("/tmp", type="tmpfs"))
    return ContainerSpec(
        COMMAND, namespaces=namespaces, tty=tty, cwd=cwd, id="ab" * 32, env=(("A", "1"),), **extra
    )


@functools.cache
def fs_ops_of(spec: ContainerSpec, with_init: bool) -> tuple[init.FsOpRef, ...]:
    """The root filesystem's steps as they travel to the helper (container.py)."""
    ops = mounts.child_ops(spec, DIRS, HOST_INIT if with_init else None)
    return tuple((op.step, op.fn.__name__, op.args) for op in ops)


@dataclass
class Built:
    spec: ContainerSpec
    child: init.ChildSpec
    plan: init.ChildPlan
    prepared: init.Prepared
    fs_names: list[str]

    @functools.cached_property
    def names(self) -> list[str]:
        return [step[0] for step in self.prepared.steps]

    def index(self, name: str) -> int:
        return self.names.index(name)

    def step(self, name: str) -> init.Step:
        return self.prepared.steps[self.index(name)]


def build(case: Case) -> Built:
    spec = spec_of(case.namespaces, case.tty, case.rootfs, case.cwd, case.network)
    fs_ops = fs_ops_of(spec, case.init) if case.rootfs else ()
    # in a root filesystem the init is where child_ops bound it
    init_path = None if not case.init else mounts.INIT_PATH if case.rootfs else HOST_INIT
    child = init.child_spec(
        spec,
        fs_ops,
        case.conf,
        None,
        init_path,
        placement=PROCS if case.placement else (),
        userns=case.userns,
    )
    if case.console:
        fds = {"stdin": CONSOLE, "stdout": CONSOLE, "stderr": CONSOLE, "console": CONSOLE}
    elif case.tty:
        fds = {"stdin": PTY, "stdout": PTY, "stderr": PTY}
    elif case.inherited_stdio:
        fds = {"stdin": 0, "stdout": 1, "stderr": 2}
    else:
        fds = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR}
    fds["errpipe"] = ERRPIPE
    if case.sync:
        fds["sync"] = SYNC
    if case.netns:
        fds["netns"] = NETNS
    if case.supervisor:
        fds["supervisor"] = SUPERVISOR
    plan = init.child_plan(child, fds, reset=())
    prepared = init.prepare(plan, drop_fds=(98, 99))
    return Built(spec, child, plan, prepared, [name for name, _fn, _args in fs_ops])


# ---------------------------------------------------------------- the model


def held_caps(userns: bool) -> int:
    """The bounding set a child has when its confinement starts: every capability in
    a user namespace it made or joined, else its cloner's (this process's)."""
    return _linux.ALL_CAPS if userns else _linux.bounding_set()


def dropped_caps(conf: init.Confinement, held: int = _linux.ALL_CAPS) -> list[int]:
    """What the child drops: the capabilities it holds and must not."""
    return [c for c in range(conf.last_cap + 1) if held >> c & 1 and not conf.bounding >> c & 1]


def confine_names(conf: init.Confinement, held: int = _linux.ALL_CAPS) -> list[str]:
    names = ["join a new session keyring"]
    names += ["drop capabilities"] * (len(dropped_caps(conf, held)) + 1)  # + PR_SET_KEEPCAPS 1
    seccomp = ["load the seccomp filter"] if conf.seccomp is not None else []
    if not conf.no_new_privs:
        names += seccomp
    # [setgroups,] setresgid, setresuid, keepcaps 0, capset, ambient clear, pdeathsig again
    names += ["set the user and capabilities"] * (7 if conf.groups is not None else 6)
    if conf.no_new_privs:
        names += ["set no_new_privs", *seccomp]
    return names


def expected_names(case: Case, fs_names: list[str]) -> list[str]:
    """The child's steps for a case, as the rules say (init.py's docstrings)."""
    ns = case.namespaces
    names = ["prctl(PR_SET_PDEATHSIG)"]
    if case.supervisor:
        names.append("check the supervisor")
    if case.placement:
        names += ["enter its cgroups"] * len(PROCS)
    if case.userns == 1 or case.network:
        names.append("wait for the supervisor")
    if case.userns == 1:
        # root of its user namespace once the maps are written (an id change clears
        # the parent death signal: set again)
        names += ["become root in the user namespace"] * 2 + ["prctl(PR_SET_PDEATHSIG)"]
    if case.netns:
        names += ["join the network namespace"] * 2  # setns, close
    if "mount" in ns:
        names.append("make / private")
        names += fs_names
        if "pid" in ns and not case.rootfs:
            names.append("mount /proc")
    if "uts" in ns:
        names.append("sethostname")
    if "net" in ns and not case.netns:
        names.append("bring up lo")
    if case.console:
        names.append("open the container's terminal")
    else:
        names.append("setsid")
        if case.tty:
            names.append("set controlling terminal")
        names += ["dup2 stdio 0", "dup2 stdio 1", "dup2 stdio 2", "close_range"]
    if case.userns == 2:
        names.append("enter a user namespace")
    if case.conf is not None:
        names += confine_names(case.conf, held_caps(bool(case.userns)))
    if case.cwd:
        names.append(f"chdir {case.cwd}")
    return names


#: the phases of the child, in the order they must come
PHASES = (
    "pdeathsig",
    "supervisor",
    "cgroups",
    "wait",
    "netns",
    "private",
    "filesystem",
    "proc",
    "hostname",
    "lo",
    "stdio",
    "userns",
    "confinement",
    "cwd",
)


_FIXED_PHASES = {
    "prctl(PR_SET_PDEATHSIG)": "pdeathsig",
    "check the supervisor": "supervisor",
    "enter its cgroups": "cgroups",
    "wait for the supervisor": "wait",
    "become root in the user namespace": "wait",
    "prctl(PR_SET_DUMPABLE)": "wait",
    "join the network namespace": "netns",
    "make / private": "private",
    "mount /proc": "proc",
    "sethostname": "hostname",
    "bring up lo": "lo",
    "open the container's terminal": "stdio",
    "setsid": "stdio",
    "set controlling terminal": "stdio",
    "dup2 stdio 0": "stdio",
    "dup2 stdio 1": "stdio",
    "dup2 stdio 2": "stdio",
    "close_range": "stdio",
    "enter a user namespace": "userns",
    "join a new session keyring": "confinement",
    "drop capabilities": "confinement",
    "load the seccomp filter": "confinement",
    "set the user and capabilities": "confinement",
    "set no_new_privs": "confinement",
}


_PHASE_INDEX = {name: PHASES.index(p) for name, p in _FIXED_PHASES.items()}


def phases(names: list[str], fs_names: list[str]) -> list[int]:
    """The phase of each step, as an index into PHASES."""
    index = {**_PHASE_INDEX, **dict.fromkeys(fs_names, PHASES.index("filesystem"))}
    out = []
    for i, name in enumerate(names):  # a root filesystem's own "mount /proc" is one of its steps
        at = index.get(name, PHASES.index("cwd") if name.startswith("chdir ") else None)
        if name == "prctl(PR_SET_PDEATHSIG)" and i:  # set again after an id change
            at = out[-1]
        assert at is not None, f"a step nobody knows: {name!r}"
        out.append(at)
    return out


def well_formed(step: init.Step) -> bool:
    """A name, a callable, a tuple of arguments, and a text for a raw call."""
    name, fn, args, raw = step
    return (
        isinstance(name, str)
        and callable(fn)
        and isinstance(args, tuple)
        and (raw is None or isinstance(raw, str))
    )


def c_array(arr: object) -> list[bytes | None]:
    return list(arr)  # type: ignore[call-overload]


# ---------------------------------------------------------------- every combination


@pytest.mark.parametrize("count", range(len(NAMESPACES) + 1), ids=lambda n: f"{n}-namespaces")
def test_every_combination_gives_the_steps_the_rules_say(count: int) -> None:
    for namespaces in (ns for ns in NS_SETS if len(ns) == count):
        for case in cases(namespaces):
            b = build(case)
            assert b.names == expected_names(case, b.fs_names), case
            check_invariants(case, b)


@pytest.mark.parametrize("namespaces", [frozenset(NAMESPACES), frozenset()], ids=["all", "none"])
def test_every_minor_option_with_every_other(namespaces: frozenset[str]) -> None:
    for case in cases(namespaces, every_minor=True):
        b = build(case)
        assert b.names == expected_names(case, b.fs_names), case
        check_invariants(case, b)


def check_invariants(case: Case, b: Built) -> None:
    names, steps = b.names, b.prepared.steps
    # the phases never go back
    order = phases(names, b.fs_names)
    assert order == sorted(order), (case, names)

    # PDEATHSIG first of all, for SIGKILL
    _name, _fn, args, _raw = steps[0]
    assert args[:2] == (_linux.PR_SET_PDEATHSIG, signal.SIGKILL), case
    # then the supervisor check, before the child could wait for anything
    if case.supervisor:
        assert names[1] == "check the supervisor", case
    # into its v1 cgroups first of all, by itself (cgroups.py says why not the
    # supervisor), each cgroup.procs file given
    if case.placement:
        first = 1 + case.supervisor
        assert names[first : first + len(PROCS)] == ["enter its cgroups"] * len(PROCS), case
        assert [b.prepared.steps[first + i][2] for i in range(len(PROCS))] == [
            (os.fsencode(p),) for p in PROCS
        ], case
    # the wait for the rootless maps or the network before anything that does real
    # work (--userns auto keeps the pipe open: it waits again)
    if case.userns == 1 or case.network:
        assert names.index("wait for the supervisor") == 1 + case.supervisor + len(PROCS) * case.placement, (
            case
        )
        assert b.step("wait for the supervisor")[2] == (SYNC, case.userns != 2), case
    # --userns auto: the user namespace after the mounts (made as root), before the
    # identity changes; the maps are asked for on the error pipe
    if case.userns == 2:
        enter = b.index("enter a user namespace")
        assert b.prepared.steps[enter][2] == (ERRPIPE, SYNC), case
        assert names[enter - 1] in ("close_range", "open the container's terminal"), case
        if case.conf is not None:
            assert names[enter + 1] == "join a new session keyring", case
    # a pooled network namespace joined, then its fd closed, before any mount
    if case.netns:
        i = b.index("join the network namespace")
        assert steps[i][3] == f"setns({NETNS}, {_linux.CLONE_NEWNET:#x})", case
        assert steps[i + 1][3] == f"close({NETNS})", case
    # "make / private" before any mount at all
    if "mount" in case.namespaces:
        private = b.step("make / private")
        assert private[2] == (None, b"/", None, _linux.MS_REC | _linux.MS_PRIVATE, None), case
        fs = {*b.fs_names, "mount /proc"}
        mount_steps = [i for i, n in enumerate(names) if n in fs]
        assert all(i > b.index("make / private") for i in mount_steps), case
        if case.rootfs:
            assert b.fs_names[-1] == "pivot_root" and names[mount_steps[-1]] == "pivot_root", case
    else:
        assert not any("mount" in n or n == "pivot_root" for n in names), case
    if "uts" in case.namespaces:
        hostname = b.spec.effective_hostname.encode()
        assert b.step("sethostname")[2] == (hostname, len(hostname)), case
    check_stdio(case, b)
    if case.conf is not None:
        check_confinement(case, b)
    if case.cwd:
        chdir = steps[-1]
        assert chdir[0] == f"chdir {case.cwd}" and chdir[2] == (os.fsencode(case.cwd),), case
    check_exec(case, b)
    assert b.prepared.errpipe == ERRPIPE and b.prepared.drop_fds == (98, 99), case
    assert b.prepared.reset == (), case


def check_stdio(case: Case, b: Built) -> None:
    names, steps = b.names, b.prepared.steps
    if case.console:
        # the pty is made after pivot_root, in the container's devpts: its stdio steps
        # are worked out in the child, from the console socket
        console = b.step("open the container's terminal")
        assert console[2] == (b.plan,) and b.plan.console == CONSOLE, case
        assert "setsid" not in names, case
        return
    i = b.index("setsid")
    if case.tty:
        assert steps[i + 1][2] == (PTY, _linux.TIOCSCTTY, 0), case
        i += 1
    want = {
        (False, False): [(STDIN, 0), (STDOUT, 1), (STDERR, 2)],
        (False, True): [(0, 0), (1, 1), (2, 2)],
        (True, False): [(PTY, 0), (PTY, 1), (PTY, 2)],
    }[case.tty, case.inherited_stdio]
    for k, (fd, target) in enumerate(want, start=1):
        name, fn, args, _raw = steps[i + k]
        assert name == f"dup2 stdio {target}", case
        if fd == target:  # already in place: only close-on-exec cleared
            assert fn is _linux.raw_fcntl and args == (fd, 2, 0), case  # F_SETFD 0
        else:
            assert fn is _linux.raw_dup2 and args == (fd, target), case
    close_range = steps[i + 4]
    assert close_range[0] == "close_range" and close_range[2][1] == 3, case  # every fd from 3 on


def check_confinement(case: Case, b: Built) -> None:
    conf = case.conf
    assert conf is not None
    names, steps = b.names, b.prepared.steps
    first = b.index("join a new session keyring")
    texts = [raw for _n, _f, _a, raw in steps[first:]]
    drops = [t for n, t in zip(names[first:], texts, strict=True) if n == "drop capabilities"]
    held = held_caps(bool(case.userns))
    assert drops == [f"prctl(PR_CAPBSET_DROP, {c})" for c in dropped_caps(conf, held)] + [
        "prctl(PR_SET_KEEPCAPS, 1)"
    ]
    assert f"setresuid({conf.uid}, {conf.uid}, {conf.uid})" in texts, case
    uid_change = first + texts.index(f"setresuid({conf.uid}, {conf.uid}, {conf.uid})")
    assert texts.index(f"setresgid({conf.gid}, {conf.gid}, {conf.gid})") < uid_change - first, case
    if conf.groups is not None:
        assert f"setgroups({list(conf.groups)})" in texts, case
    else:  # a user namespace with only the user mapped refuses it
        assert not any(t.startswith("setgroups") for t in texts if t), case
    # the kernel forgets PDEATHSIG when the uid changes: asked for again after it
    assert texts.index(f"prctl(PR_SET_PDEATHSIG, {signal.SIGKILL})") > uid_change - first, case
    if conf.seccomp is not None:
        seccomp = b.index("load the seccomp filter")
        if conf.no_new_privs:
            # without CAP_SYS_ADMIN needed: the filter comes last, right after no_new_privs
            assert seccomp == b.index("set no_new_privs") + 1 > uid_change, case
        else:
            # loaded while CAP_SYS_ADMIN is still effective: before the uid change
            assert b.index("drop capabilities") < seccomp < uid_change, case
            assert "set no_new_privs" not in names, case
    # the working directory is entered as the container's user
    if case.cwd:
        assert b.index(f"chdir {case.cwd}") > uid_change, case


def check_exec(case: Case, b: Built) -> None:
    candidates, argv, envp, prog = b.prepared.exec
    assert prog == "sh", case
    assert candidates == tuple(os.fsencode(f"{d}/sh") for d in DEFAULT_PATH.split(":")), case
    assert c_array(argv) == [b"sh", b"-c", b"echo hi", None], case
    env = c_array(envp)
    assert env[-1] is None and b"A=1" in env and f"PATH={DEFAULT_PATH}".encode() in env, case
    assert (b"TERM=xterm" in env) == case.tty, case
    if not case.init:
        assert b.prepared.init is None, case
        return
    assert b.prepared.init is not None
    path, init_argv, init_envp = b.prepared.init
    assert path == os.fsencode(mounts.INIT_PATH if case.rootfs else HOST_INIT), case
    # not PID 1 (no PID namespace): tini must be a subreaper (-s)
    sub = [] if "pid" in case.namespaces else [b"-s"]
    assert c_array(init_argv) == [path, *sub, b"--", b"sh", b"-c", b"echo hi", None], case
    assert init_envp is envp, case


# ---------------------------------------------------------------- single rules, spelled out


def test_a_plain_container_in_every_namespace() -> None:
    case = Case(frozenset(NAMESPACES), False, False, None, False, "root", False, False, 0, False, False, True)
    b = build(case)
    spec_host = b.spec.short_id.encode()
    assert b.names == [
        "prctl(PR_SET_PDEATHSIG)",
        "check the supervisor",
        "make / private",
        "mount /proc",
        "sethostname",
        "bring up lo",
        "setsid",
        "dup2 stdio 0",
        "dup2 stdio 1",
        "dup2 stdio 2",
        "close_range",
        *confine_names(CONFINEMENTS["root"], held_caps(False)),  # type: ignore[arg-type]
    ]
    assert b.step("sethostname")[2][0] == spec_host


def test_the_root_filesystem_steps_follow_make_private_and_come_before_the_hostname() -> None:
    case = Case(
        frozenset(NAMESPACES), False, True, "/work dir", True, "user", False, True, 0, True, False, True
    )
    b = build(case)
    names = b.names
    start = b.index("make / private")
    assert names[start + 1 : start + 1 + len(b.fs_names)] == b.fs_names
    assert names[start + len(b.fs_names)] == "pivot_root"
    # with a root filesystem its own /proc is one of its steps, not the host's fresh one
    assert "mount /proc" in b.fs_names and names.count("mount /proc") == 1
    assert b.fs_names[0].startswith("mount overlay")
    # the functions come from the table the helper resolves names with
    for name, fn, _args, raw in b.prepared.steps[start + 1 : start + 1 + len(b.fs_names)]:
        assert fn in mounts.CHILD_FUNCTIONS.values() and raw is None, name
    # the netns join comes before the sysfs mount (which shows the mounter's network)
    assert b.index("join the network namespace") < b.index("mount /sys")
    assert "bring up lo" not in names  # the pooled namespace has lo up already


def test_a_host_network_namespace_gets_no_lo_step_and_host_uts_no_hostname() -> None:
    case = Case(
        frozenset({"pid", "mount"}), False, False, None, False, "none", False, False, 0, False, False, False
    )
    b = build(case)
    assert b.names == [
        "prctl(PR_SET_PDEATHSIG)",
        "make / private",
        "mount /proc",
        "setsid",
        "dup2 stdio 0",
        "dup2 stdio 1",
        "dup2 stdio 2",
        "close_range",
    ]


def test_every_step_is_well_formed() -> None:
    for ns in (frozenset(NAMESPACES), frozenset({"mount", "net"}), frozenset()):
        for case in cases(ns, every_minor=True)[::7]:
            steps = build(case).prepared.steps
            assert all(well_formed(step) for step in steps), case


@pytest.mark.parametrize(
    "join",
    [
        sum(spawn.NAMESPACE_FLAGS.values()),
        sum(spawn.NAMESPACE_FLAGS.values()) | _linux.CLONE_NEWUSER,  # a rootless container's
        spawn.NAMESPACE_FLAGS["mount"] | spawn.NAMESPACE_FLAGS["pid"],  # --network/--uts/--ipc host
    ],
    ids=["all", "all+user", "mount+pid"],
)
def test_an_exec_joins_the_container_first_and_sets_up_no_namespace(join: int) -> None:
    for tty, console, conf, placement, sup in itertools.product(
        (False, True), (False, True), CONFINEMENTS, (False, True), (False, True)
    ):
        if console and not tty:
            continue
        child = init.exec_child_spec(
            COMMAND,
            {"PATH": DEFAULT_PATH},
            "/srv",
            tty,
            join,
            CONFINEMENTS[conf],
            placement=PROCS if placement else (),
        )
        fds = {"stdin": PTY, "stdout": PTY, "stderr": PTY} if tty else {"stdin": 0, "stdout": 1, "stderr": 2}
        if console:  # an exec into a container with a root filesystem
            fds = dict.fromkeys(("stdin", "stdout", "stderr", "console"), CONSOLE)
        fds.update(errpipe=ERRPIPE, target=TARGET)
        if sup:
            fds["supervisor"] = SUPERVISOR
        prepared = init.prepare(init.child_plan(child, fds, reset=()))
        names = [step[0] for step in prepared.steps]
        expected = ["prctl(PR_SET_PDEATHSIG)"]
        # into the container's v1 cgroups by host paths, before it joins its mount
        # namespace; not dumpable (init.py says why) before it joins the rest
        expected += ["check the supervisor"] * sup + ["enter its cgroups"] * len(PROCS) * placement
        expected += ["prctl(PR_SET_DUMPABLE)", "join the container"]
        if console:
            expected.append("open the container's terminal")
        else:
            expected += ["setsid", *["set controlling terminal"] * tty]
            expected += ["dup2 stdio 0", "dup2 stdio 1", "dup2 stdio 2", "close_range"]
        conf_steps = CONFINEMENTS[conf]
        held = held_caps(bool(join & _linux.CLONE_NEWUSER))
        expected += confine_names(conf_steps, held) if conf_steps is not None else []
        expected.append("chdir /srv")
        assert names == expected, (tty, console, conf, placement, sup)
        # one setns through PID 1's pidfd for all but the PID namespace, which the
        # process that clones joined for it
        joined = prepared.steps[names.index("join the container")]
        assert joined[2][1:] == (TARGET, join & ~_linux.CLONE_NEWPID)
        assert prepared.init is None and c_array(prepared.exec[1])[:-1] == [os.fsencode(a) for a in COMMAND]


@pytest.mark.parametrize("userns", [0, 1, 2])
def test_a_cloner_that_dropped_the_bounding_set_leaves_its_child_nothing_to_drop(
    monkeypatch: pytest.MonkeyPatch, userns: int
) -> None:
    # A spawn helper for one confinement drops its bounding set once
    # (``_linux.drop_bounding``); a child in a user namespace, made or joined, has
    # every capability there again and drops them itself.
    conf = CONFINEMENTS["root"]
    assert conf is not None
    monkeypatch.setattr(_linux, "_bounding", conf.bounding)
    ns = frozenset(NAMESPACES)
    case = Case(ns, False, False, None, False, "root", False, False, userns, False, False, True)
    drops = [raw for name, _f, _a, raw in build(case).prepared.steps if name == "drop capabilities"]
    every = [f"prctl(PR_CAPBSET_DROP, {c})" for c in range(conf.last_cap + 1) if not conf.bounding >> c & 1]
    assert drops == (every if userns else []) + ["prctl(PR_SET_KEEPCAPS, 1)"]
    # a user namespace made by the clone itself, whatever the child spec says
    cloned = init.prepare(build(case).plan, (), _linux.CLONE_NEWUSER).steps
    assert [raw for name, _f, _a, raw in cloned if name == "drop capabilities"][:-1] == every
    # and a few more than the container keeps: only those
    monkeypatch.setattr(_linux, "_bounding", conf.bounding | 1 << 21 | 1 << 38)  # SYS_ADMIN, PERFMON
    drops = [raw for name, _f, _a, raw in build(case).prepared.steps if name == "drop capabilities"]
    assert drops[:-1] == (every if userns else ["prctl(PR_CAPBSET_DROP, 21)", "prctl(PR_CAPBSET_DROP, 38)"])


def test_a_named_tuple_replaces_only_the_fields_it_has() -> None:
    # the helper's NamedTuple (no typing, no collections): _replace copies the tuple
    # with the fields named changed, of the same class, and refuses other names
    conf = CONFINEMENTS["root"]
    assert conf is not None
    changed = conf._replace(uid=7, split=None)
    assert type(changed) is type(conf) and changed.uid == 7 and changed.gid == conf.gid
    assert [f for f in conf._fields if getattr(changed, f) != getattr(conf, f)] == ["uid"]
    with pytest.raises(TypeError, match="nothing"):
        conf._replace(nothing=1)


def test_confinement_steps_are_made_once_per_confinement() -> None:
    conf = CONFINEMENTS["user-nnp"]
    assert conf is not None
    assert init.confine_steps(conf) is init.confine_steps(conf._replace())


def test_a_request_round_trips_its_child_spec() -> None:
    """What the helper unpacks is the ChildSpec the supervisor made, for every shape."""
    for ns in NS_SETS:
        for case in cases(ns)[:: max(1, len(cases(ns)) // 8)]:
            child = build(case).child
            assert init.child_from_wire(init.child_to_wire(child)) == child
