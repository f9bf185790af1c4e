"""``python -m qa3c_qiskit.backends``: the table of known backends."""

import sys

from .cli import main

sys.exit(main())
