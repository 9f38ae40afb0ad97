from __future__ import annotations

import sys
from pathlib import Path

# Test helpers live in helpers/ (a directory without a conftest.py, so adding it to sys.path
# cannot shadow another package's `conftest` module when suites share one pytest session).
_HELPERS = str(Path(__file__).parent / "helpers")
if _HELPERS not in sys.path:
    sys.path.append(_HELPERS)
