"""The exceptions of mydocker: one small hierarchy, messages that name what failed."""

from __future__ import annotations

import errno as _errno
import os

#: what every "needs privileges" failure says
NOT_PERMITTED = "mydocker needs root (CAP_SYS_ADMIN) to create namespaces"


class MydockerError(Exception):
    """Base of every error mydocker raises on purpose."""

    #: the exit status the CLI uses for this error (docker's convention)
    exit_code: int = 125


class SpecError(MydockerError, ValueError):
    """The container's description is invalid (bad flag value, bad path, ...)."""


class NotPermittedError(MydockerError, PermissionError):
    """mydocker lacks the privileges it needs (it must run as root)."""


class StartError(MydockerError):
    """The container could not be started; ``step`` names the failing stage.

    Attributes:
        step: the init or spawn step that failed, e.g. ``"mount /proc"``.
        errno: the kernel's error number, or 0 when there is none.
    """

    def __init__(self, step: str, errno: int = 0, detail: str = "") -> None:
        self.step = step
        self.errno = errno
        self.detail = detail
        text = detail or (os.strerror(errno) if errno else "failed")
        if errno == _errno.EPERM:
            text += f" ({NOT_PERMITTED})"
        super().__init__(f"{step}: {text}")


class CommandNotFoundError(StartError):
    """The command does not exist on the container's PATH (exit status 127)."""

    exit_code = 127


class CommandNotExecutableError(StartError):
    """The command exists but cannot be executed (exit status 126)."""

    exit_code = 126


class ContainerNotRunningError(MydockerError):
    """The container has exited (or was never started): nothing to exec into."""


class ContainerPathError(MydockerError, OSError):
    """A path inside a container that does not exist, or is not what was needed."""

    def __str__(self) -> str:
        return str(self.strerror or super().__str__())  # the sentence, without "[Errno N]"


class ContainerFailedError(MydockerError):
    """Raised by ``run_container(check=True)`` when the container exits non-zero.

    Carries the container's ``args``, ``returncode``, ``stdout`` and ``stderr`` like
    ``subprocess.CalledProcessError``.
    """

    def __init__(
        self,
        args: tuple[str, ...],
        returncode: int,
        stdout: bytes | None = None,
        stderr: bytes | None = None,
        oom_killed: bool = False,
    ) -> None:
        self.cmd = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.oom_killed = oom_killed
        why = " (out of memory)" if oom_killed else ""
        super().__init__(f"container {list(args)!r} exited with status {returncode}{why}")


class MydockerWarning(UserWarning):
    """Something mydocker did differently than asked, for a reason it says (e.g. a
    user namespace with one id, for want of newuidmap). The CLI prints each as one
    ``mydocker: ...`` line."""
