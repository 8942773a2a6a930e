"""mydocker-runc's command line grammar: runc's global options, commands and their
flags, parsed by a table.

Not argparse: importing it and building a parser for every command cost ~10 ms of
CPU per call here (``bench/oci.py``), a sixth of a whole ``create``, for a grammar
of a few flags. runc's conventions: global options before the command; a command's
flags before its arguments (``exec ID CMD ARGS...``: everything after the id is the
command's); ``-bundle`` is ``--bundle`` (Go's flag package); ``--flag=value``.
"""

from __future__ import annotations

from types import SimpleNamespace

PROG = "mydocker-runc"


class UsageError(Exception):
    """A command line that does not parse (one line, for stderr)."""


#: an option: (its attribute, "flag" | "value" | "list" | "int", default)
Option = tuple[str, str, object]

GLOBAL: dict[str, Option] = {
    "--root": ("root", "value", "/run/mydocker-runc"),
    "--log": ("log", "value", None),
    "--log-format": ("log_format", "value", "text"),
    "--debug": ("debug", "flag", False),
    "--systemd-cgroup": ("systemd_cgroup", "flag", False),
    "--rootless": ("rootless", "value", "auto"),
    "--criu": ("criu", "value", None),
    "--version": ("version", "flag", False),
    "-v": ("version", "flag", False),
}

_CREATE: dict[str, Option] = {
    "--bundle": ("bundle", "value", "."),
    "-b": ("bundle", "value", "."),
    "--pid-file": ("pid_file", "value", None),
    "--console-socket": ("console_socket", "value", None),
    "--no-pivot": ("no_pivot", "flag", False),
    "--no-new-keyring": ("no_new_keyring", "flag", False),
    "--preserve-fds": ("preserve_fds", "int", 0),
}
_FORMAT: dict[str, Option] = {"--format": ("format", "value", "table"), "-f": ("format", "value", "table")}

#: every command: (help, its options, its positional arguments (name, default), and
#: the attribute that takes every argument after them, or None)
COMMANDS: dict[str, tuple[str, dict[str, Option], tuple[tuple[str, str], ...], str | None]] = {
    "create": (
        "create a container (set up, waiting before its program)",
        _CREATE,
        (("container_id", ""),),
        None,
    ),
    "run": (
        "create and start a container (and wait for it unless --detach)",
        {
            **_CREATE,
            "--detach": ("detach", "flag", False),
            "-d": ("detach", "flag", False),
            "--keep": ("keep", "flag", False),
        },
        (("container_id", ""),),
        None,
    ),
    "start": ("start a created container", {}, (("container_id", ""),), None),
    "state": ("print a container's state (JSON)", {}, (("container_id", ""),), None),
    "kill": (
        "send a signal to a container (default SIGTERM)",
        {"--all": ("all", "flag", False), "-a": ("all", "flag", False)},
        (("container_id", ""), ("signal", "SIGTERM")),
        None,
    ),
    "delete": (
        "delete a container",
        {"--force": ("force", "flag", False), "-f": ("force", "flag", False)},
        (("container_id", ""),),
        None,
    ),
    "exec": (
        "run a process in a running container: exec [OPTIONS] ID [COMMAND ARGS...]",
        {
            "--process": ("process", "value", None),
            "-p": ("process", "value", None),
            "--detach": ("detach", "flag", False),
            "-d": ("detach", "flag", False),
            "--pid-file": ("pid_file", "value", None),
            "--console-socket": ("console_socket", "value", None),
            "--tty": ("tty", "flag", False),
            "-t": ("tty", "flag", False),
            "--cwd": ("cwd", "value", None),
            "--env": ("env", "list", ()),
            "-e": ("env", "list", ()),
            "--user": ("user", "value", None),
            "-u": ("user", "value", None),
            "--additional-gids": ("additional_gids", "list", ()),
            "-g": ("additional_gids", "list", ()),
            "--cap": ("cap", "list", ()),
            "-c": ("cap", "list", ()),
            "--no-new-privs": ("no_new_privs", "flag", False),
            "--preserve-fds": ("preserve_fds", "int", 0),
        },
        (("container_id", ""),),
        "args",
    ),
    "list": (
        "list containers",
        {**_FORMAT, "--quiet": ("quiet", "flag", False), "-q": ("quiet", "flag", False)},
        (),
        None,
    ),
    "ps": (
        "list a container's processes: ps [OPTIONS] ID [PS ARGS...]",
        _FORMAT,
        (("container_id", ""),),
        "ps_args",
    ),
    "pause": ("freeze a container's processes", {}, (("container_id", ""),), None),
    "resume": ("thaw a paused container", {}, (("container_id", ""),), None),
    "update": (
        "change a container's resources",
        {
            "--resources": ("resources", "value", None),
            "-r": ("resources", "value", None),
            **{
                f"--{flag}": (flag.replace("-", "_"), "value", None)
                for flag in (
                    "memory",
                    "memory-reservation",
                    "memory-swap",
                    "cpu-shares",
                    "cpu-period",
                    "cpu-quota",
                    "cpuset-cpus",
                    "cpuset-mems",
                    "pids-limit",
                )
            },
        },
        (("container_id", ""),),
        None,
    ),
    "events": (
        "a container's resource usage (JSON)",
        {"--stats": ("stats", "flag", False), "--interval": ("interval", "value", "5s")},
        (("container_id", ""),),
        None,
    ),
    "features": ("what this runtime supports (JSON)", {}, (), None),
    "spec": (
        "write a default config.json",
        {
            "--bundle": ("bundle", "value", "."),
            "-b": ("bundle", "value", "."),
            "--rootless": ("spec_rootless", "flag", False),
        },
        (),
        None,
    ),
}


def _option(spec: dict[str, Option], args: list[str], i: int, ns: SimpleNamespace, where: str) -> int:
    """Take the option at ``args[i]`` into ``ns``; the index of what follows it."""
    name, eq, inline = args[i].partition("=")
    if name.startswith("-") and not name.startswith("--") and len(name) > 2:
        name = "-" + name  # runc's -bundle
    if name not in spec:
        raise UsageError(f"{where}: unknown option {args[i]!r} (see '{PROG} {where} --help')")
    attr, kind, _default = spec[name]
    if kind == "flag":
        if eq:
            if inline not in ("true", "false"):
                raise UsageError(f"{where}: {name} takes no value")
            setattr(ns, attr, inline == "true")
        else:
            setattr(ns, attr, True)
        return i + 1
    if eq:
        value, i = inline, i + 1
    elif i + 1 < len(args):
        value, i = args[i + 1], i + 2
    else:
        raise UsageError(f"{where}: {name} needs a value")
    if kind == "int":
        if not value.lstrip("-").isdigit():
            raise UsageError(f"{where}: {name} needs a number, not {value!r}")
        setattr(ns, attr, int(value))
    elif kind == "list":
        setattr(ns, attr, [*getattr(ns, attr), value])
    else:
        setattr(ns, attr, value)
    return i


def _defaults(spec: dict[str, Option], ns: SimpleNamespace) -> None:
    for attr, kind, default in spec.values():
        setattr(ns, attr, list(default) if kind == "list" else default)  # type: ignore[call-overload]


def usage(command: str | None = None) -> str:
    """Help text: the commands, or one command's options."""
    if command in COMMANDS:
        help, options, positionals, rest = COMMANDS[command]
        names = " ".join(name.upper().replace("CONTAINER_ID", "ID") for name, _d in positionals)
        lines = [
            f"usage: {PROG} [GLOBAL OPTIONS] {command} [OPTIONS] {names}{' ...' if rest else ''}",
            "",
            help,
        ]
        if options:
            lines += ["", "options:"]
            seen: dict[str, list[str]] = {}
            for flag, (attr, kind, _d) in options.items():
                seen.setdefault(attr, []).append(flag + ("" if kind == "flag" else " VALUE"))
            lines += [f"  {', '.join(flags)}" for flags in seen.values()]
        return "\n".join(lines)
    lines = [
        f"usage: {PROG} [--root DIR] [--log FILE] [--log-format text|json] [--debug] COMMAND [OPTIONS] ...",
        "",
        "An OCI runtime (runc's command line) on mydocker's engine.",
        "",
        "commands:",
    ]
    lines += [f"  {name:10s} {help.split(':')[0]}" for name, (help, *_rest) in COMMANDS.items()]
    lines += [
        "",
        "global options: --root DIR (default /run/mydocker-runc), --log FILE, --log-format text|json,",
    ]
    lines += ["  --debug, --systemd-cgroup (not supported), --rootless auto|false, -v/--version, -h/--help"]
    return "\n".join(lines)


def parse(argv: list[str]) -> SimpleNamespace:
    """The command line as attributes: the global options, ``command`` (None with
    ``--version`` or nothing), ``help`` (the usage text to print, if asked), and the
    command's options and arguments.

    Raises:
        UsageError: an unknown command or option, or a missing value.
    """
    ns = SimpleNamespace(command=None, help=None)
    _defaults(GLOBAL, ns)
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        if argv[i] in ("-h", "--help"):
            ns.help = usage()
            return ns
        i = _option(GLOBAL, argv, i, ns, "mydocker-runc")
    if i == len(argv):
        return ns
    command = argv[i]
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r} (see '{PROG} --help')")
    ns.command = command
    _help, options, positionals, rest = COMMANDS[command]
    _defaults(options, ns)
    for name, default in positionals:
        setattr(ns, name, default)
    if rest:
        setattr(ns, rest, [])
    i += 1
    taken = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help") and not (rest and taken == len(positionals)):
            ns.help = usage(command)
            return ns
        if arg == "--" and not (rest and taken == len(positionals)):
            i += 1
            continue
        if arg.startswith("-") and arg != "-" and not (rest and taken == len(positionals)):
            i = _option(options, argv, i, ns, command)
            continue
        if taken < len(positionals):
            setattr(ns, positionals[taken][0], arg)
            taken += 1
        elif rest:
            getattr(ns, rest).append(arg)
        else:
            raise UsageError(f"{command}: unexpected argument {arg!r} (see '{PROG} {command} --help')")
        i += 1
    return ns
