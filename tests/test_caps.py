"""Capabilities: docker's rules for --cap-add/--cap-drop/--privileged (pure), the
masks, and (as root) a forked child that makes the raw calls the container's child
makes and reports its own /proc/self/status, before and after an execve."""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

import pytest

from supervisor import _linux
from supervisor import capabilities as caps
from supervisor.capabilities import DEFAULT_CAPS, CapSets, parse_caps
from supervisor.errors import SpecError

EVERY_CAP = frozenset(caps.CAP_NAMES)
NET_ADMIN = 1 << 12


@pytest.fixture(autouse=True)
def kernel_knows_every_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pure tests must not depend on the host kernel's cap_last_cap (the root tests
    read the real one through ``_linux.cap_last_cap``)."""
    monkeypatch.setattr(caps, "_last_cap", caps.LAST_KNOWN_CAP)


# ---------------------------------------------------------------- the table and masks


def test_default_mask_is_dockers() -> None:
    assert caps.mask(DEFAULT_CAPS) == 0xA80425FB
    assert len(DEFAULT_CAPS) == 14


def test_table_ends_at_checkpoint_restore() -> None:
    assert caps.CAP_NAMES[40] == "CAP_CHECKPOINT_RESTORE"
    assert caps.LAST_KNOWN_CAP == 40
    assert caps.CAPABILITIES["CAP_SETFCAP"] == 31
    assert caps.CAPABILITIES["CAP_AUDIT_READ"] == 37
    assert caps.CAPABILITIES["CAP_BPF"] == 39


def test_table_matches_the_kernel_header() -> None:
    header = Path("/usr/include/linux/capability.h")
    if not header.exists():
        pytest.skip("no <linux/capability.h> on this host")
    defined = dict(re.findall(r"#define (CAP_[A-Z_]+)\s+(\d+)\s*$", header.read_text(), re.M))
    assert defined, "no capability found in the header"
    for name, number in defined.items():
        if name != "CAP_LAST_CAP":
            assert caps.CAPABILITIES[name] == int(number), name


def test_mask_and_names_are_inverse() -> None:
    assert caps.names(caps.mask(EVERY_CAP)) == EVERY_CAP
    assert caps.mask(EVERY_CAP) == (1 << 41) - 1
    assert caps.names(0) == frozenset()
    assert caps.names(1 << 63 | NET_ADMIN) == {"CAP_NET_ADMIN"}  # unnamed bits left out


def test_mask_refuses_an_unnormalised_name() -> None:
    with pytest.raises(SpecError, match="unknown capability 'NET_ADMIN'"):
        caps.mask({"NET_ADMIN"})


# ---------------------------------------------------------------- docker's rules


@pytest.mark.parametrize(
    "name", ["net_admin", "NET_ADMIN", "cap_net_admin", "CAP_NET_ADMIN", "Cap_Net_ADMIN"]
)
def test_names_with_or_without_prefix_in_any_case(name: str) -> None:
    assert caps.normalize(name) == "CAP_NET_ADMIN"


@pytest.mark.parametrize("name", ["all", "ALL", "All"])
def test_all_in_any_case(name: str) -> None:
    assert caps.normalize(name) == "ALL"


def _parse(add: tuple[str, ...] = (), drop: tuple[str, ...] = (), privileged: bool = False) -> frozenset[str]:
    return parse_caps(add, drop, privileged, available=EVERY_CAP)


@pytest.mark.parametrize(
    ("add", "drop", "expected"),
    [
        ((), (), DEFAULT_CAPS),
        (("NET_ADMIN",), (), DEFAULT_CAPS | {"CAP_NET_ADMIN"}),
        (("net_admin", "CAP_NET_ADMIN"), (), DEFAULT_CAPS | {"CAP_NET_ADMIN"}),
        ((), ("chown", "CAP_KILL"), DEFAULT_CAPS - {"CAP_CHOWN", "CAP_KILL"}),
        ((), ("SYS_ADMIN",), DEFAULT_CAPS),  # dropping one the defaults lack changes nothing
        (("NET_ADMIN",), ("ALL",), {"CAP_NET_ADMIN"}),
        (("NET_ADMIN", "sys_time"), ("all",), {"CAP_NET_ADMIN", "CAP_SYS_TIME"}),
        ((), ("ALL",), frozenset()),
        (("ALL",), (), EVERY_CAP),
        (("ALL",), ("NET_ADMIN", "sys_admin"), EVERY_CAP - {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}),
        # ALL in --cap-add wins over ALL in --cap-drop, whatever the order
        (("ALL",), ("ALL",), EVERY_CAP),
        # added and dropped: the drop applies to the defaults, then the add: it is in
        (("NET_ADMIN",), ("NET_ADMIN",), DEFAULT_CAPS | {"CAP_NET_ADMIN"}),
        (("CHOWN",), ("chown",), DEFAULT_CAPS),
        (("CHOWN", "NET_ADMIN"), ("CHOWN", "KILL"), (DEFAULT_CAPS - {"CAP_KILL"}) | {"CAP_NET_ADMIN"}),
    ],
)
def test_dockers_combinations(add: tuple[str, ...], drop: tuple[str, ...], expected: frozenset[str]) -> None:
    assert _parse(add, drop) == expected


def test_privileged_is_everything_available_and_ignores_the_flags() -> None:
    available = frozenset({"CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_BPF"})
    assert parse_caps((), (), True, available=available) == available
    # docker does not even look at --cap-add/--cap-drop then
    assert parse_caps(("NOPE",), ("ALL", "chown"), True, available=available) == available


def test_all_means_what_is_available() -> None:
    available = DEFAULT_CAPS | {"CAP_SYS_ADMIN"}
    assert parse_caps(("ALL",), ("CHOWN",), available=available) == available - {"CAP_CHOWN"}


def test_any_set_of_available_capabilities_will_do() -> None:
    # the answers are cached: a caller's plain set (unhashable) is taken all the same
    assert parse_caps(["NET_ADMIN"], available={"CAP_NET_ADMIN"}) == {"CAP_NET_ADMIN"}
    assert parse_caps(["NET_ADMIN"], available=["CAP_NET_ADMIN"]) == {"CAP_NET_ADMIN"}  # type: ignore[arg-type]


def test_only_caps_the_kernel_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caps, "_last_cap", 37)  # Linux 5.4: no PERFMON, BPF, CHECKPOINT_RESTORE
    assert "CAP_BPF" not in parse_caps(("ALL",), available=EVERY_CAP)
    assert "CAP_BPF" not in parse_caps(privileged=True, available=EVERY_CAP)
    with pytest.raises(SpecError, match="not available: CAP_BPF"):
        parse_caps(("bpf",), available=EVERY_CAP)


def test_adding_an_unavailable_cap_fails() -> None:
    with pytest.raises(SpecError, match="capability not available: CAP_SYS_ADMIN, CAP_SYS_TIME"):
        parse_caps(("sys_time", "SYS_ADMIN", "chown"), available=DEFAULT_CAPS)


def test_dropping_an_unavailable_cap_is_accepted() -> None:
    assert parse_caps((), ("SYS_ADMIN",), available=DEFAULT_CAPS) == DEFAULT_CAPS


def test_a_default_that_is_not_available_is_left_out() -> None:
    available = DEFAULT_CAPS - {"CAP_MKNOD"}
    assert parse_caps(available=available) == available


@pytest.mark.parametrize(
    ("add", "drop", "message"),
    [
        (("NET_ADMINN",), (), "unknown capability 'CAP_NET_ADMINN' in --cap-add"),
        ((), ("bogus",), "unknown capability 'CAP_BOGUS' in --cap-drop"),
        (("CAP_ALL",), (), "unknown capability 'CAP_ALL'"),
        (("",), (), "unknown capability 'CAP_'"),
        ((" net_admin",), (), "unknown capability 'CAP_ NET_ADMIN'"),
        (("ALL", "nope"), (), "unknown capability 'CAP_NOPE'"),
        (("NET_ADMIN",), ("ALL", "x"), "unknown capability 'CAP_X' in --cap-drop"),
    ],
)
def test_bad_names(add: tuple[str, ...], drop: tuple[str, ...], message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)) as info:
        _parse(add, drop)
    assert "\n" not in str(info.value)


def test_real_caller_bounding_set() -> None:
    """Without ``available`` the caller's own bounding set is the limit."""
    mine = caps.read_sets().bounding_names
    assert parse_caps(privileged=True) == mine & caps.kernel_caps()


# ---------------------------------------------------------------- sets and /proc


def test_container_sets_for_root_and_others() -> None:
    default = caps.mask(DEFAULT_CAPS)
    root = CapSets(permitted=default, effective=default, bounding=default)
    assert caps.container_sets(DEFAULT_CAPS, 0) == root
    assert caps.container_sets(DEFAULT_CAPS, 1000) == CapSets(bounding=default)


STATUS = """\
Name:\tsh
Uid:\t1000\t1000\t1000\t1000
CapInh:\t0000000000000000
CapPrm:\t00000000a80425fb
CapEff:\t00000000a80425fb
CapBnd:\t000001ffffffffff
CapAmb:\t0000000000001000
NoNewPrivs:\t0
"""


def test_parse_status() -> None:
    assert caps.parse_status(STATUS) == CapSets(0, 0xA80425FB, 0xA80425FB, (1 << 41) - 1, NET_ADMIN)


def test_parse_status_missing_a_set() -> None:
    with pytest.raises(ValueError, match="no ambient"):
        caps.parse_status(STATUS.replace("CapAmb", "Nope"))


# ---------------------------------------------------------------- the child's raw calls


def _texts(calls: list[_linux.RawCall]) -> list[str]:
    return [text for _fn, _args, text in calls]


def test_before_seccomp_drops_every_other_cap_then_keeps_caps() -> None:
    calls = _linux.identity_calls_before_seccomp(caps.mask(DEFAULT_CAPS), 40)
    dropped = [args[1] for fn, args, _ in calls[:-1]]
    assert dropped == [n for n in range(41) if caps.CAP_NAMES[n] not in DEFAULT_CAPS]
    assert all(args[0] == _linux.PR_CAPBSET_DROP for _, args, _ in calls[:-1])
    assert _texts(calls)[-1] == "prctl(PR_SET_KEEPCAPS, 1)"


def test_before_seccomp_goes_up_to_the_kernels_last_cap() -> None:
    calls = _linux.identity_calls_before_seccomp(0, 37)
    assert [args[1] for _, args, _ in calls[:-1]] == list(range(38))


def test_after_seccomp_order() -> None:
    calls = _linux.identity_calls_after_seccomp(0, 0, 1000, 1001, (1001, 27), pdeathsig=9)
    assert _texts(calls) == [
        "setgroups([1001, 27])",
        "setresgid(1001, 1001, 1001)",
        "setresuid(1000, 1000, 1000)",
        "prctl(PR_SET_KEEPCAPS, 0)",
        "capset(effective=0x0, permitted=0x0, inheritable=0x0)",
        "prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)",
        "prctl(PR_SET_PDEATHSIG, 9)",
    ]
    # plain ints and ctypes buffers only: nothing for the child to convert
    for _fn, args, _text in calls:
        assert all(a is None or isinstance(a, (int, ctypes.Array)) for a in args)


def test_capset_buffers() -> None:
    _fn, (nr, header, data), _text = _linux.capset_call(0x1FFFEFFFFFF, 0xA80425FB, NET_ADMIN)
    assert nr == _linux.NR_ID["capset"]
    assert list(header) == [0x20080522, 0]
    # struct __user_cap_data_struct[2]: {effective, permitted, inheritable} for 0-31, 32-63
    assert list(data) == [0xFEFFFFFF, 0xA80425FB, NET_ADMIN, 0x1FF, 0, 0]


def test_setgroups_of_none() -> None:
    _fn, args, text = _linux.setgroups_call(())
    assert args == (_linux.NR_ID["setgroups"], 0, None)
    assert text == "setgroups([])"


# ---------------------------------------------------------------- real calls (root)


def _status_fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _run_child(calls: list[_linux.RawCall], exec_cat: bool = False) -> str:
    """Fork; the child makes ``calls`` in order, then sends back its /proc/self/status
    (read by itself, or with ``exec_cat`` by /bin/cat after an execve). Reaped and
    closed before returning."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns, never raises into pytest
        code = 1
        try:
            os.close(r)
            for fn, args, text in calls:
                if fn(*args) == -1:
                    err = _linux.errno_now()
                    os.write(w, f"FAILED {text}: {os.strerror(err)}".encode())
                    os._exit(1)
            if exec_cat:
                os.dup2(w, 1)
                os.execv("/bin/cat", ["cat", "/proc/self/status"])
            with open("/proc/self/status", "rb") as f:
                os.write(w, f.read())
            code = 0
        except BaseException:  # noqa: BLE001
            pass
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with open(r, "rb") as f:
        while chunk := f.read():
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


def _calls(sets: CapSets, uid: int, gid: int, groups: tuple[int, ...]) -> list[_linux.RawCall]:
    return [
        *_linux.identity_calls_before_seccomp(sets.bounding, _linux.cap_last_cap()),
        *_linux.identity_calls_after_seccomp(sets.effective, sets.permitted, uid, gid, groups),
    ]


@pytest.fixture
def host_caps(monkeypatch: pytest.MonkeyPatch) -> CapSets:
    """The test process's own sets; the calls below need root's full sets."""
    mine = caps.read_sets()
    needed = caps.mask({"CAP_SETPCAP", "CAP_SETUID", "CAP_SETGID"})
    if mine.effective & needed != needed:
        pytest.skip("needs CAP_SETPCAP, CAP_SETUID and CAP_SETGID")
    monkeypatch.setattr(caps, "_last_cap", None)  # the real kernel's, for parse_caps here
    return mine


@pytest.mark.root
def test_root_gets_dockers_default_set(host_caps: CapSets) -> None:
    sets = caps.container_sets(parse_caps(), 0)
    for text in (_run_child(_calls(sets, 0, 0, ())), _run_child(_calls(sets, 0, 0, ()), exec_cat=True)):
        assert caps.parse_status(text) == CapSets(0, 0xA80425FB, 0xA80425FB, 0xA80425FB, 0)
        fields = _status_fields(text)
        assert fields["Uid"].split() == ["0"] * 4
        assert fields["Gid"].split() == ["0"] * 4
        assert fields["Groups"] == ""


@pytest.mark.root
def test_non_root_user_keeps_only_the_bounding_set(host_caps: CapSets) -> None:
    sets = caps.container_sets(parse_caps(), 1000)
    for text in (
        _run_child(_calls(sets, 1000, 1001, (1001, 2000))),
        _run_child(_calls(sets, 1000, 1001, (1001, 2000)), exec_cat=True),
    ):
        assert caps.parse_status(text) == CapSets(0, 0, 0, 0xA80425FB, 0)
        fields = _status_fields(text)
        assert fields["Uid"].split() == ["1000"] * 4
        assert fields["Gid"].split() == ["1001"] * 4
        assert fields["Groups"].split() == ["1001", "2000"]


@pytest.mark.root
def test_drop_all_add_net_admin(host_caps: CapSets) -> None:
    sets = caps.container_sets(parse_caps(["NET_ADMIN"], ["ALL"]), 0)
    text = _run_child(_calls(sets, 0, 0, ()), exec_cat=True)
    assert caps.parse_status(text) == CapSets(0, NET_ADMIN, NET_ADMIN, NET_ADMIN, 0)


@pytest.mark.root
def test_privileged_keeps_the_callers_bounding_set(host_caps: CapSets) -> None:
    sets = caps.container_sets(parse_caps(privileged=True), 0)
    text = _run_child(_calls(sets, 0, 0, ()), exec_cat=True)
    everything = host_caps.bounding
    assert caps.parse_status(text) == CapSets(0, everything, everything, everything, 0)


@pytest.mark.root
def test_keepcaps_lets_a_non_root_uid_keep_what_it_is_given(host_caps: CapSets) -> None:
    """Not docker's choice, but what the calls can do: PR_SET_KEEPCAPS carries the
    permitted set over setresuid, so capset sets any sets for any uid."""
    text = _run_child(_calls(CapSets(0, NET_ADMIN, NET_ADMIN, NET_ADMIN, 0), 1000, 1000, ()))
    assert caps.parse_status(text) == CapSets(0, NET_ADMIN, NET_ADMIN, NET_ADMIN, 0)


@pytest.mark.root
def test_inherited_ambient_and_inheritable_caps_are_cleared(host_caps: CapSets) -> None:
    full = host_caps.permitted
    raise_ambient: list[_linux.RawCall] = [
        _linux.capset_call(full, full, NET_ADMIN),
        (_linux.raw_prctl, (_linux.PR_CAP_AMBIENT, _linux.PR_CAP_AMBIENT_RAISE, 12, 0, 0), "raise ambient"),
    ]
    before = caps.parse_status(_run_child(raise_ambient))
    assert (before.inheritable, before.ambient) == (NET_ADMIN, NET_ADMIN)
    sets = caps.container_sets(parse_caps(), 1000)
    after = caps.parse_status(_run_child([*raise_ambient, *_calls(sets, 1000, 1000, ())], exec_cat=True))
    assert after == CapSets(0, 0, 0, 0xA80425FB, 0)


@pytest.mark.root
def test_between_the_halves_the_effective_set_is_untouched(host_caps: CapSets) -> None:
    """Where a seccomp filter goes: the bounding set is already the container's, the
    effective set still the supervisor's (CAP_SYS_ADMIN included)."""
    calls = _linux.identity_calls_before_seccomp(caps.mask(DEFAULT_CAPS), _linux.cap_last_cap())
    got = caps.parse_status(_run_child(calls))
    assert got.bounding == 0xA80425FB
    assert got.effective == host_caps.effective
    assert got.effective >> caps.CAPABILITIES["CAP_SYS_ADMIN"] & 1


@pytest.mark.root
def test_a_failing_call_says_which(host_caps: CapSets) -> None:
    """capset cannot raise a capability the permitted set no longer has."""
    calls = [*_calls(CapSets(bounding=0xA80425FB), 1000, 1000, ()), _linux.capset_call(NET_ADMIN, NET_ADMIN)]
    with pytest.raises(AssertionError, match=r"FAILED capset\(effective=0x1000"):
        _run_child(calls)


@pytest.mark.root
def test_parent_death_signal_survives_the_uid_change(host_caps: CapSets) -> None:
    """The kernel forgets PR_SET_PDEATHSIG when the effective uid changes: the
    calls set it again, or a container would outlive a killed supervisor."""
    for rearm, expected in ((0, b"0"), (9, b"9")):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                _linux.raw_prctl(_linux.PR_SET_PDEATHSIG, 9, 0, 0, 0)
                for fn, args, _text in _linux.identity_calls_after_seccomp(0, 0, 1000, 1000, (), rearm):
                    if fn(*args) == -1:
                        os._exit(1)
                signal = ctypes.c_int(-1)
                _linux.raw_prctl(2, ctypes.byref(signal), 0, 0, 0)  # PR_GET_PDEATHSIG
                os.write(w, str(signal.value).encode())
            finally:
                os._exit(0)
        os.close(w)
        with open(r, "rb") as f:
            got = f.read()
        os.waitpid(pid, 0)
        assert got == expected
