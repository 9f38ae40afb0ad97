from __future__ import annotations

import sys
from pathlib import Path

# Test helpers (exporter_builders) live next to the tests; importlib mode does not add this dir.
sys.path.insert(0, str(Path(__file__).parent))
