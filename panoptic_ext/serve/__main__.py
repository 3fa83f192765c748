"""``python -m panoptic_ext.serve``: tools/serve.py without the repository (the benchmark
starts servers this way)."""

import sys

from .server import main

sys.exit(main())
