"""``python -m weave_nvshmem.bench``: see ``weave_nvshmem.bench.cli``."""
import sys

from .cli import main

sys.exit(main())
