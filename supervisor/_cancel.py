"""Finishing what must be finished, even under asyncio's own cancellation.

An anyio ``CancelScope(shield=True)`` holds off anyio's cancellations (timeouts,
cancelled task groups) on both backends, and trio's. It does not hold off a native
asyncio ``Task.cancel()`` (``asyncio.wait_for``, ``asyncio.timeout``, a second Ctrl-C
under ``asyncio.run``): that one is raised at the next ``await`` even inside the
shield. Where an ``await`` stands between a child and its reaping, that would orphan
the child, so such awaits go through ``to_the_end``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def to_the_end(step: Callable[[], Awaitable[T]]) -> tuple[T, BaseException | None]:
    """Await ``step()`` until it completes, calling it again after each cancellation
    that gets through: ``(its result, the first such cancellation or None)``. The
    caller finishes its cleanup and then raises the cancellation.

    ``step`` must be safe to call again after being interrupted. Another exception
    propagates, unless a cancellation came first: that one is raised instead.
    """
    cancelled: BaseException | None = None
    while True:
        try:
            return await step(), cancelled
        except anyio.get_cancelled_exc_class() as e:
            cancelled = cancelled or e
        except BaseException as e:
            if cancelled is not None:
                raise cancelled from e
            raise
