"""``python -m dml_dist`` is the ``dml-dist`` command (Ray job entrypoints use this form)."""

import sys

from dml_dist.cli import main

sys.exit(main())
