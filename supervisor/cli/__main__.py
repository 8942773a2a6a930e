"""``python -m supervisor.cli``: the ``mydocker`` command."""

from . import main

main()
