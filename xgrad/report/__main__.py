"""``python -m xgrad.report``: see :mod:`xgrad.report.cli`."""

from .cli import main

raise SystemExit(main())
