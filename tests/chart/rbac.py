"""hack/rbac-report.py, importable (its file name has a dash): the tests use its parser."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "hack" / "rbac-report.py"
_spec = importlib.util.spec_from_file_location("fgo_rbac_report", _PATH)
assert _spec is not None and _spec.loader is not None
report_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = report_module  # dataclasses look their module up there
_spec.loader.exec_module(report_module)

Rule = report_module.Rule
rbac_rules = report_module.rbac_rules
