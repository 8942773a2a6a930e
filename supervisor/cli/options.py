"""Options several commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])

STATE_DIR_HELP = (
    "Images, containers and the daemon's socket (default: $MYDOCKER_STATE_DIR or /var/lib/mydocker)."
)


def state_dir_option(f: F) -> F:
    """``--state-dir DIR``."""
    return click.option("--state-dir", metavar="DIR", help=STATE_DIR_HELP)(f)


def resolve_state_dir(given: str | None) -> str:
    """The state directory a command works on."""
    from ..state import state_dir

    return state_dir(given)
