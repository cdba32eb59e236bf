"""``python -m structq``: the ``structq`` command line (structq.cli)."""

from structq.cli import main

main()
