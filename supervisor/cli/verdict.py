"""What ``mydocker run`` says and writes when its container is gone: the limit that
struck (one line on stderr) and, with ``--report FILE``, the verdict and the figures
as one JSON object (``usage.report``)."""

from __future__ import annotations

import signal

from ..container import Container
from ..process import Process
from ..usage import MEMORY, ReportFile, failure_report, report
from .signals import report_oom, say

#: the ``--report`` of this run, until it is written
_pending: ReportFile | None = None


def open_report(path: str) -> ReportFile:
    """Open ``--report FILE`` (before anything starts: ``SpecError`` if it cannot be
    written); if mydocker fails later, ``failed`` writes the failure there."""
    global _pending
    _pending = ReportFile(path)
    return _pending


def failed(message: str, code: int) -> None:
    """mydocker's own failure (the CLI's one error line): an ``XX`` report, if one
    is pending."""
    if _pending is not None:
        _pending.write(failure_report(code, message))


def end(container: Process, report_file: ReportFile | None = None) -> None:
    """Say which limit struck, if one did, and write the report. Call it once the
    container is closed (its figures are final then). Nothing for an exec."""
    if not isinstance(container, Container):
        return
    verdict = container.verdict
    if verdict is None or verdict.limit in (None, MEMORY):
        report_oom(container)
    elif container.signal == signal.SIGKILL:
        say(f"the container was killed: {verdict.message}")
    else:  # it ended on its own meanwhile, or past its budget (a check comes every few ms)
        say(verdict.message)
    if report_file is not None and verdict is not None:
        report_file.write(report(container.returncode, container.signal, container.usage, verdict))
