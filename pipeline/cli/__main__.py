"""``python -m pipeline.cli``: the ``changemap`` command."""
import sys

from pipeline.cli import main

sys.exit(main())
