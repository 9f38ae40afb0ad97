"""bench/ is run as a package from the repository root (`python -m bench.run`), not installed:
make it importable for pytest, whose importlib mode leaves sys.path alone."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
