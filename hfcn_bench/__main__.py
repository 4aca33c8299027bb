"""``python -m hfcn_bench ...`` runs the ``hfcn-bench`` command line (handy in a checkout that is not
the installed one: the module follows ``sys.path``, the console script its install)."""

import sys

from .cli import main

sys.exit(main())
