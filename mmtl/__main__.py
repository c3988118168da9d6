"""``python -m mmtl`` (and ``torchrun -m mmtl``) runs the CLI."""
import sys

from mmtl.cli import main

sys.exit(main())
