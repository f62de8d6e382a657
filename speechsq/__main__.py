"""``python -m speechsq`` is the ``speechsq`` command."""

import sys

from speechsq.cli import main

sys.exit(main())
