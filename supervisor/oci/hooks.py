"""The hooks of an OCI config: host programs run at points of the lifecycle, each
with the container's state (JSON) on its stdin.

When each runs, and where (runtime-spec config.md, "POSIX-platform Hooks"):

    prestart, createRuntime   create, after the mounts, before pivot_root; in the
                              runtime's namespaces
    createContainer           then, in the container's namespaces (its mount
                              namespace still shows the host's root)
    startContainer            start, before the program is exec'd; a program of
                              the container's, run as an exec into it is
                              (``lifecycle._run_start_hook``): confined as its
                              process, in its namespaces and cgroup
    poststart                 start, once the program runs; the runtime's
                              namespaces; a failure is a warning
    poststop                  delete, after the container is gone; a failure is a
                              warning

"In the container's namespaces": the hook's process joins them all through a pidfd
of the container's process (one ``setns``) between its fork and its exec. A hook
that fails (exit status, signal, its ``timeout``) stops the lifecycle with one line
naming it, where the spec says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from .. import _linux
from ..errors import StartError
from .config import OCI_VERSION, Hook


def state_json(
    container_id: str,
    status: str,
    pid: int,
    bundle: str,
    annotations: Iterable[tuple[str, str]] | dict[str, str] = (),
) -> dict[str, object]:
    """The state of a container (runtime-spec runtime.md, "State")."""
    state: dict[str, object] = {"ociVersion": OCI_VERSION, "id": container_id, "status": status}
    if pid > 0:
        state["pid"] = pid
    state["bundle"] = bundle
    state["annotations"] = dict(annotations)
    return state


def run(
    kind: str,
    hooks: Iterable[Hook],
    state: dict[str, object],
    *,
    pidfd: int = -1,
    namespaces: int = 0,
    warn: Callable[[str], None] | None = None,
    runner: Callable[[Hook, bytes], None] | None = None,
) -> None:
    """Run ``hooks`` one after the other with ``state`` on their stdin; with a
    ``pidfd``, each in the ``namespaces`` (CLONE_NEW* flags) of that process;
    ``runner``: how to run one (a hook and its stdin), instead of ``run_one``.

    Raises:
        StartError: a hook failed (step "<kind> hook"), unless ``warn`` is given:
            then it is told, and the next hook runs.
    """
    data = json.dumps(state).encode()
    for hook in hooks:
        try:
            if runner is not None:
                runner(hook, data)
            else:
                run_one(hook, data, pidfd, namespaces)
        except StartError as e:
            if warn is None:
                raise StartError(f"{kind} hook", e.errno, e.detail) from None
            warn(f"{kind} hook: {e.detail}")


def run_one(hook: Hook, stdin: bytes, pidfd: int = -1, namespaces: int = 0) -> None:
    """Run one hook to its end.

    Raises:
        StartError: it could not start, failed, or ran past its timeout (killed).
    """
    import subprocess

    env: dict[str, str] = {}
    for item in hook.env or ():
        key, _, value = item.partition("=")
        env[key] = value
    argv = list(hook.args) or [hook.path]

    def enter() -> None:  # in the hook's process, between fork and exec
        _linux.setns(pidfd, namespaces)

    try:
        done = subprocess.run(
            argv,
            executable=hook.path,
            env=env,
            input=stdin,
            capture_output=True,
            timeout=hook.timeout,
            preexec_fn=enter if pidfd >= 0 and namespaces else None,
            cwd="/",
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StartError("hook", 0, f"{hook.path} did not finish in {hook.timeout} s (killed)") from None
    except subprocess.SubprocessError as e:  # the preexec_fn failed: setns refused
        raise StartError("hook", 0, f"{hook.path}: cannot enter the container's namespaces: {e}") from None
    except OSError as e:
        raise StartError("hook", e.errno or 0, f"{hook.path}: {e.strerror or e}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        how = (
            f"killed by signal {-done.returncode}"
            if done.returncode < 0
            else f"exit status {done.returncode}"
        )
        raise StartError("hook", 0, f"{hook.path}: {how}" + (f": {said[-1]}" if said else ""))
