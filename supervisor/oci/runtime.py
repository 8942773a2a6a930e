"""``mydocker-runc``: runc's command line over OCI bundles.

    mydocker-runc [--root DIR] [--log FILE] [--log-format text|json] [--debug] COMMAND ...

containerd's shim calls it exactly as it calls runc (``--root R --log B/log.json
--log-format json create --bundle B --pid-file B/init.pid [--console-socket S]
ID``, ``start ID``, ``state ID``, ``kill ID SIG``, ``delete [--force] ID``,
``exec --process F --detach --pid-file P ID``, ``ps --format json ID``, ``pause``,
``resume``, ``update --resources -``, ``events --stats``); runc's single-dash long
options (``-bundle``) are taken too.

Errors are runc's: exit status 1, one line on stderr (``mydocker-runc: ...``) and,
with ``--log``, one entry in the log file in the chosen format (json:
``{"level":"error","msg":...,"time":...}``, which containerd reads back); never a
traceback (``--debug`` adds it to the log). ``run`` and ``exec`` in the foreground
exit with the container's status.
"""

from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace
from typing import Any, NoReturn

from .. import __version__
from ..errors import MydockerError, SpecError
from . import records
from .args import PROG, UsageError, parse

VERSION = __version__


class Log:
    """The ``--log`` file (append), in runc's ``text`` or ``json`` format."""

    def __init__(self, path: str | None, fmt: str, debug: bool) -> None:
        self.path = path
        self.fmt = fmt
        self.debug_on = debug

    def _write(self, level: str, msg: str) -> None:
        if not self.path:
            return
        from .lifecycle import now as _now

        now = _now()
        if self.fmt == "json":
            line = json.dumps({"level": level, "msg": msg, "time": now})
        else:
            line = f"time={json.dumps(now)} level={level} msg={json.dumps(msg)}"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, line.encode() + b"\n")
            finally:
                os.close(fd)
        except OSError:
            pass  # the message still goes to stderr

    def error(self, msg: str) -> None:
        self._write("error", msg)

    def warning(self, msg: str) -> None:
        self._write("warning", msg)
        if not self.path:
            print(f"{PROG}: warning: {msg}", file=sys.stderr)

    def debug(self, msg: str) -> None:
        if self.debug_on:
            self._write("debug", msg)


# ---------------------------------------------------------------- commands


def _need_id(args: SimpleNamespace) -> str:
    if not args.container_id:
        raise UsageError(f"{args.command} needs a container id (see '{PROG} {args.command} --help')")
    return str(args.container_id)


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def _run(args: SimpleNamespace, log: Log) -> int:
    from . import lifecycle

    cmd = args.command
    root = args.root
    if cmd in ("create", "run"):
        if args.preserve_fds:
            raise SpecError("--preserve-fds is not supported (only 0)")
        cid = _need_id(args)
        pid_file = os.path.abspath(args.pid_file) if args.pid_file else None
        console = os.path.abspath(args.console_socket) if args.console_socket else None
        if cmd == "create":
            made = lifecycle.create(
                root, cid, args.bundle, pid_file=pid_file, console_socket=console, warn=log.warning
            )
            log.debug(f"created container {cid}: pid {made.record.pid}")
            return 0
        return lifecycle.run(
            root,
            cid,
            args.bundle,
            detach=args.detach,
            pid_file=pid_file,
            console_socket=console,
            keep=args.keep,
            warn=log.warning,
        )
    if cmd == "start":
        lifecycle.start(root, _need_id(args), warn=log.warning)
    elif cmd == "state":
        _print_json(lifecycle.state(root, _need_id(args)))
    elif cmd == "kill":
        lifecycle.kill(root, _need_id(args), lifecycle.parse_signal(args.signal), all_processes=args.all)
    elif cmd == "delete":
        lifecycle.delete(root, _need_id(args), force=args.force, warn=log.warning)
    elif cmd == "exec":
        return _exec(args, log)
    elif cmd == "list":
        _list(records.check_root(root), args)
    elif cmd == "ps":
        return _ps(records.check_root(root), args)
    elif cmd in ("pause", "resume"):
        _pause(records.check_root(root), _need_id(args), cmd == "pause")
    elif cmd == "update":
        _update(records.check_root(root), args)
    elif cmd == "events":
        return _events(records.check_root(root), args)
    elif cmd == "features":
        _print_json(features())
    elif cmd == "spec":
        _spec(args)
    return 0


def _exec(args: SimpleNamespace, log: Log) -> int:
    from . import config as oci_config
    from . import lifecycle

    cid = _need_id(args)
    root = records.check_root(args.root)
    if args.preserve_fds:
        raise SpecError("--preserve-fds is not supported (only 0)")
    if args.process:
        try:
            with open(args.process, "rb") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise SpecError(f"--process {args.process}: {e}") from None
        process = oci_config.parse_process(data, "process.json")
    else:
        command = list(args.args)
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            raise UsageError(f"exec needs --process or a command (see '{PROG} exec --help')")
        base = lifecycle.exec_defaults(root, cid)
        env = dict(base.env_dict())
        for item in args.env:
            key, sep, value = item.partition("=")
            if not key or not sep:
                raise SpecError(f"--env {item!r} must be KEY=VALUE")
            env[key] = value
        uid, gid = base.uid, base.gid
        if args.user:
            user, _, group = args.user.partition(":")
            try:
                uid = int(user)
                gid = int(group) if group else gid
            except ValueError:
                raise SpecError(f"--user {args.user!r} must be UID[:GID]") from None
        caps = base.capabilities
        if args.cap and caps is not None:
            added = frozenset(
                c.upper() if c.upper().startswith("CAP_") else "CAP_" + c.upper() for c in args.cap
            )
            caps = caps._replace(
                bounding=caps.bounding | added,
                effective=caps.effective | added,
                permitted=caps.permitted | added,
            )
        process = base._replace(
            args=tuple(command),
            env=tuple(f"{k}={v}" for k, v in env.items()),
            cwd=args.cwd or base.cwd,
            uid=uid,
            gid=gid,
            additional_gids=tuple(int(g) for g in args.additional_gids) or base.additional_gids,
            terminal=args.tty,
            capabilities=caps,
            no_new_privileges=base.no_new_privileges or args.no_new_privs,
        )
    console = os.path.abspath(args.console_socket) if args.console_socket else None
    pid_file = os.path.abspath(args.pid_file) if args.pid_file else None
    return lifecycle.exec_process(
        root, cid, process, detach=args.detach, pid_file=pid_file, console_socket=console, warn=log.warning
    )


def _list(root: str, args: SimpleNamespace) -> None:
    from . import lifecycle

    states = []
    for cid in records.ids(root):
        try:
            states.append(lifecycle.state_of(root, records.load(root, cid)))
        except MydockerError:
            continue
    if args.quiet:
        for s in states:
            print(s["id"])
    elif args.format == "json":
        _print_json(states)
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [
            (
                str(s["id"]),
                str(s["pid"]),
                str(s["status"]),
                str(s["bundle"]),
                str(s["created"]),
                str(s["owner"]),
            )
            for s in states
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            print("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cgroup_of(root: str, cid: str) -> Any:
    from .cgroup import OciCgroup

    return OciCgroup.from_json(records.load(root, cid).cgroup)


def _ps(root: str, args: SimpleNamespace) -> int:
    pids = _cgroup_of(root, _need_id(args)).pids()
    if args.format == "json":
        _print_json(pids)
        return 0
    import subprocess

    ps_args = [a for a in args.ps_args if a != "--"] or ["-ef"]
    try:
        out = subprocess.run(["ps", *ps_args], capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as e:
        raise MydockerError(f"ps {' '.join(ps_args)} failed: {e}") from None
    lines = out.splitlines()
    if not lines:
        return 0
    header = lines[0].split()
    if "PID" not in header:
        raise MydockerError("ps printed no PID column")
    col = header.index("PID")
    print(lines[0])
    wanted = set(pids)
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > col and fields[col].isdigit() and int(fields[col]) in wanted:
            print(line)
    return 0


def _pause(root: str, cid: str, frozen: bool) -> None:
    from . import lifecycle

    with records.held(root, cid) as (_slot, rec):
        status = records.status(root, rec)
        want = "running" if frozen else "paused"
        if status != want:
            raise lifecycle.ContainerStateError(f"container {cid} is {status}, not {want}")
        _cgroup_of(root, cid).freeze(frozen)


def _update(root: str, args: SimpleNamespace) -> None:
    from . import config as oci_config

    cid = _need_id(args)
    data: dict[str, Any] = {}
    if args.resources:
        try:
            if args.resources == "-":
                data = json.load(sys.stdin)
            else:
                with open(args.resources, "rb") as f:
                    data = json.load(f)
        except (OSError, ValueError) as e:
            raise SpecError(f"--resources {args.resources}: {e}") from None
    flags = {
        "memory": ("memory", "limit"),
        "memory_reservation": ("memory", "reservation"),
        "memory_swap": ("memory", "swap"),
        "cpu_shares": ("cpu", "shares"),
        "cpu_period": ("cpu", "period"),
        "cpu_quota": ("cpu", "quota"),
        "cpuset_cpus": ("cpu", "cpus"),
        "cpuset_mems": ("cpu", "mems"),
        "pids_limit": ("pids", "limit"),
    }
    for attr, (section, key) in flags.items():  # the names of _UPDATE_FLAGS
        value = getattr(args, attr)
        if value is None:
            continue
        if key not in ("cpus", "mems"):
            try:
                value = int(value)
            except ValueError:
                raise SpecError(f"--{attr.replace('_', '-')} {value!r} must be a whole number") from None
        data.setdefault(section, {})[key] = value
    res = oci_config.parse_resources(data)
    with records.held(root, cid):
        _cgroup_of(root, cid).update(res)


def _events(root: str, args: SimpleNamespace) -> int:
    cid = _need_id(args)
    text = args.interval.strip()
    try:
        interval = float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))
    except ValueError:
        raise SpecError(f"--interval {args.interval!r} is not a duration (e.g. 5s)") from None
    while True:
        rec = records.load(root, cid)
        if records.status(root, rec) == "stopped":
            raise MydockerError(f"container {cid} is not running")
        from .cgroup import OciCgroup

        stats = OciCgroup.from_json(rec.cgroup).stats()
        sys.stdout.write(json.dumps({"type": "stats", "id": cid, "data": stats}) + "\n")
        sys.stdout.flush()
        if args.stats:
            return 0
        time.sleep(max(interval, 0.01))


def features() -> dict[str, object]:
    """What this runtime supports (runtime-spec features.md)."""
    from .. import capabilities
    from .config import MOUNT_FLAGS, OCI_VERSION, PROPAGATION

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": sorted([*MOUNT_FLAGS, *PROPAGATION, "bind", "rbind", "rro"]),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": sorted(capabilities.kernel_caps()),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": False},
            "seccomp": {
                "enabled": True,
                "actions": [
                    "SCMP_ACT_ALLOW",
                    "SCMP_ACT_ERRNO",
                    "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD",
                    "SCMP_ACT_LOG",
                    "SCMP_ACT_TRACE",
                    "SCMP_ACT_TRAP",
                ],
                "operators": [
                    "SCMP_CMP_EQ",
                    "SCMP_CMP_GE",
                    "SCMP_CMP_GT",
                    "SCMP_CMP_LE",
                    "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ",
                    "SCMP_CMP_NE",
                ],
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {"io.github.mydocker.version": VERSION},
    }


def default_spec() -> dict[str, object]:
    """The config ``spec`` writes: busybox-friendly, confined as docker confines."""
    from ..capabilities import DEFAULT_CAPS
    from ..mounts import MASKED_PATHS, READONLY_PATHS
    from .config import OCI_VERSION

    caps = sorted(DEFAULT_CAPS)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "mydocker",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def _spec(args: SimpleNamespace) -> None:
    if args.spec_rootless:
        raise SpecError("--rootless is not supported (mydocker-runc needs root)")
    path = os.path.join(args.bundle, "config.json")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise SpecError(f"{path} exists: remove it first") from None
    except OSError as e:
        raise SpecError(f"cannot write {path}: {e.strerror}") from None
    with open(fd, "w", encoding="utf-8") as f:
        json.dump(default_spec(), f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------- main


def _open_standard_fds() -> None:
    # a closed 0, 1 or 2 would be the next fd opened, and handed to a container
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def main(argv: list[str] | None = None) -> NoReturn:
    """The console script: run one command, exit with its status."""
    _open_standard_fds()
    argv = sys.argv[1:] if argv is None else argv
    log = Log(None, "text", False)
    try:
        args = parse(argv)
        log = Log(args.log, args.log_format, args.debug)
        if args.help is not None:
            print(args.help)
            sys.exit(0)
        if args.version:
            print(f"{PROG} version {VERSION}\nspec: {_spec_version()}")
            sys.exit(0)
        if args.command is None:
            raise UsageError(f"a command is needed (see '{PROG} --help')")
        if args.log_format not in ("text", "json"):
            raise UsageError(f"--log-format {args.log_format!r}: text or json")
        if args.systemd_cgroup:
            raise SpecError("--systemd-cgroup is not supported: mydocker-runc manages cgroupfs paths only")
        if args.rootless not in ("auto", "false"):
            raise SpecError(f"--rootless {args.rootless} is not supported (mydocker-runc needs root)")
        code = _run(args, log)
    except SystemExit:
        raise
    except UsageError as e:
        _fail(log, str(e))
    except KeyboardInterrupt:
        sys.exit(130)
    except MydockerError as e:
        _fail(log, str(e))
    except OSError as e:
        if log.debug_on:
            log.debug(_traceback())
        _fail(log, str(e))
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        log.debug(_traceback())
        _fail(log, f"internal error: {type(e).__name__}: {e} (--debug --log FILE keeps the traceback)")
    sys.exit(code)


def _traceback() -> str:
    import traceback  # only for --debug's log: not on every call's start

    return traceback.format_exc()


def _spec_version() -> str:
    from .config import OCI_VERSION

    return OCI_VERSION


def _fail(log: Log, message: str) -> NoReturn:
    log.error(message)
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
