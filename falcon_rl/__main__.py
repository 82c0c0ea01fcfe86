"""``python -m falcon_rl ...`` (and ``torchrun ... -m falcon_rl ...``): the ``falcon-rl`` command."""

import sys

from falcon_rl.cli import main

sys.exit(main())
