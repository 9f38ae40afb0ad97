"""Fuzzing the command line: whatever the arguments, nvidia-smi answers like the real tool -
one of its exit codes, its message shapes - and never with a Python traceback."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fgo_common.nodestate import write_node_state
from fgo_nvidia_smi import clock
from fgo_nvidia_smi.cli import MAIN_OPTIONS, SUB_OPTIONS
from fgo_nvidia_smi.main import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smi_fixtures import hgx_node
from smi_testlib import make_env

KNOWN = sorted({*MAIN_OPTIONS, *(o for table in SUB_OPTIONS.values() for o in table)})
WORDS = [
    "topo",
    "mig",
    "dmon",
    "pmon",
    "nvlink",
    "csv",
    "noheader",
    "nounits",
    "0",
    "1",
    "7",
    "-1",
    "abc",
    "name",
    "memory.used",
    "bogus.field",
    "MEMORY",
    "ECC",
    "all",
    "",
    "=",
    "GPU-123",
    "00000000:18:00.0",
    "--format=csv",
    "--query-gpu=index,name",
]
EXIT_CODES = {0, 2, 3, 4, 6, 9, 255}


class _LoopStopped(Exception):
    """Raised from the patched sleep: loop modes would otherwise run forever."""


token = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(WORDS),
    st.builds(lambda o, v: f"{o}={v}", st.sampled_from(KNOWN), st.sampled_from(WORDS)),
    st.text(max_size=12),
)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("state")
    write_node_state(directory, hgx_node())
    return directory


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    argv=st.one_of(
        st.lists(token, max_size=6),
        # option/value pairs reach deeper into the modes than random tokens do
        st.lists(st.tuples(st.sampled_from(KNOWN), st.sampled_from(WORDS)), max_size=3).map(
            lambda pairs: [part for pair in pairs for part in pair]
        ),
        st.tuples(
            st.sampled_from(["topo", "mig", "dmon", "pmon"]), st.lists(token, max_size=4)
        ).map(lambda t: [t[0], *t[1]]),
    )
)
def test_any_arguments_give_a_real_tool_answer(
    argv: list[str], state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # -f writes relative files here

    def stop(seconds: float) -> None:
        raise _LoopStopped

    monkeypatch.setattr(clock, "sleep", stop)
    out, err = io.StringIO(), io.StringIO()
    try:
        code = run(argv, out, err, make_env(state))
    except _LoopStopped:
        return  # a loop mode that printed its first round: fine
    assert code in EXIT_CODES, (argv, code)
    text = out.getvalue()
    assert "Traceback" not in text + err.getvalue()
    if code == 255:
        assert text.startswith(
            ("ERROR: Option ", "Invalid combination of input arguments", "Failed to open file")
        ), (argv, text)
    if code == 2:
        assert text.startswith(("Field ", '"')), (argv, text)
    if code == 6:
        assert text == "No devices were found\n"
    if code == 3:
        assert "not simulated" in err.getvalue()
