"""``python -m scf_nb``: the ``scf-nb`` command (``python -m scf_nb.demo`` is the tour)."""

import sys

from .cli import main

sys.exit(main())
