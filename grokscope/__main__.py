"""``python -m grokscope ...``: the ``grokscope`` command (see :mod:`grokscope.cli`)."""

from .cli import main

raise SystemExit(main())
