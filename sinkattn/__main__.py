"""`python -m sinkattn ...` (and `torchrun -m sinkattn run ...`): the CLI."""

import sys

from .cli import main

sys.exit(main())
