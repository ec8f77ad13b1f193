"""``python -m ntkit`` runs the ``ntkit`` command."""
import sys

from .cli import main

sys.exit(main())
