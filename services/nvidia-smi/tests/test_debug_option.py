"""``--debug``: the real tool's ``--debug=FILE`` and run-ai/fake-gpu-operator's bare ``--debug``.

The real nvidia-smi writes an encrypted driver log to FILE and runs the command; there is no
driver log here, so the command runs and FILE is left alone. A bare ``--debug`` is an error of
the real tool (missing value), but the reference's e2e tests call ``/bin/nvidia-smi --debug`` and
expect success (and a ``N%  Default`` utilisation cell): it prints the default table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from smi_testlib import Runner


def test_bare_debug_prints_the_default_table(smi: Runner) -> None:
    plain = smi()
    debug = smi("--debug")
    assert (debug.code, debug.out, debug.err) == (0, plain.out, "")
    # What the reference's test parses when there are no trace lines.
    assert re.search(r"(\d+)%\s+Default", debug.out)


@pytest.mark.parametrize("form", ["--debug={path}", "--debug {path}"])
def test_debug_file_runs_the_command(smi: Runner, tmp_path: Path, form: str) -> None:
    path = tmp_path / "smi.log"
    args = form.format(path=path).split()
    assert smi(*args, "-L").out == smi("-L").out
    result = smi(*args)
    assert (result.code, result.out) == (0, smi().out)
    assert not path.exists()


@pytest.mark.parametrize("args", [("--debug", "-L"), ("-L", "--debug")])
def test_bare_debug_next_to_another_mode(smi: Runner, args: tuple[str, ...]) -> None:
    """A following option is never taken as the debug file."""
    assert smi(*args).out == smi("-L").out


def test_other_errors_are_unchanged(smi: Runner) -> None:
    result = smi("--debugx")
    assert result.code == 255
    assert "Option --debugx is not recognized" in result.out
