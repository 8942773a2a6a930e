"""The ``mydocker`` command line: builds a ContainerSpec, runs it, exits with its status.

One module per command group (``run.py``, ``image.py``, ``network.py``), the foreground runner
(``foreground.py``, with ``signals.py`` and ``tty.py``) below them; this module is
the group, its global flags and its one way of reporting errors.

Errors are printed once, as one line (``mydocker: ...``), with exit status 125 for
mydocker's own failures, 126/127 for a command that cannot run (docker's codes);
``--debug`` adds the traceback. Start-up time matters (it is most of
``mydocker run /bin/true``): anyio and the container machinery are imported only
when a container is really run.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from .. import __version__
from ..errors import MydockerError

EXIT_MYDOCKER = 125


def _fail(message: str, code: int = EXIT_MYDOCKER) -> NoReturn:
    click.echo(f"mydocker: {message}", err=True)
    verdict = sys.modules.get(f"{__name__}.verdict")  # loaded by --report
    if verdict is not None:
        verdict.failed(message, code)
    sys.exit(code)


def _say_warnings() -> None:
    """mydocker's warnings as ``mydocker: ...`` lines, each once."""
    import warnings

    from ..errors import MydockerWarning

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        if issubclass(category, MydockerWarning):
            from .signals import say

            say(str(message))

    warnings.showwarning = show
    warnings.simplefilter("once", MydockerWarning)


class _Group(click.Group):
    """A group whose usage errors are one line and exit 125, as docker's are."""

    def main(self, args: Any = None, prog_name: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        debug = "--debug" in sys.argv[1:2]
        kwargs["standalone_mode"] = False
        _say_warnings()
        try:
            return super().main(args, prog_name, **kwargs)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            _fail("aborted")
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            _fail(f"{e.format_message()}{hint}")
        except click.ClickException as e:
            _fail(e.format_message())
        except MydockerError as e:
            if debug:
                raise
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except OSError as e:
            if debug:
                raise
            _fail(str(e))
        except Exception as e:
            if debug:
                raise
            _fail(f"internal error: {type(e).__name__}: {e} (run 'mydocker --debug ...' for the traceback)")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-v", "--version", prog_name="mydocker")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def main(debug: bool) -> None:
    """mydocker: run commands in Linux containers (namespaces, cgroups, a pty)."""


def _add_commands() -> None:
    from . import containers
    from .attach import attach
    from .daemon import daemon
    from .exec import cp, exec_
    from .image import image
    from .network import network
    from .run import run

    main.add_command(run)
    for command in (
        containers.ps,
        containers.logs,
        containers.stop,
        containers.kill,
        containers.wait,
        containers.rm,
        containers.inspect,
        containers.commit,
        containers.stats,
        exec_,
        cp,
        attach,
    ):
        main.add_command(command)
    main.add_command(image)
    main.add_command(network)
    main.add_command(daemon)


_add_commands()
