"""``python -m pipeline.cli``: the ``changemap`` command."""
import sys

from pipeline.cli import console

sys.exit(console())
