"""``python -m scf_nb.cli``: the ``scf-nb`` command."""

import sys

from . import main

sys.exit(main())
