"""The shared command line of the services: --help, --version, and one-line failures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fgo_common.runtime.entry import service_main
from fgo_common.runtime.settings import SettingsError, env_field


@dataclasses.dataclass(frozen=True)
class _Settings:
    kubeconfig: str = env_field("KUBECONFIG", "", "kubeconfig path")
    mode: str = env_field("TEST_MODE", "a", "which mode", choices=("a", "b"))
    count: int = env_field("TEST_COUNT", 3, "how many")

    def validate(self) -> None:
        if self.count < 0:
            raise SettingsError(f"TEST_COUNT={self.count}: must be >= 0")


def _main(argv: list[str], started: list[_Settings]) -> int:
    def start(settings: _Settings) -> int:
        started.append(settings)
        return 7

    return service_main(
        component="svc",
        prog="fgo-svc",
        description="A test service.",
        settings_cls=_Settings,
        start=start,
        argv=argv,
    )


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    return path


def test_help_lists_every_setting_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    started: list[_Settings] = []
    with pytest.raises(SystemExit) as done:
        _main(["--help"], started)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fgo-svc")
    assert "A test service." in out
    for line in ("KUBECONFIG=", "TEST_MODE=a", "(one of: a, b)", "TEST_COUNT=3", "how many"):
        assert line in out
    assert not started


def test_version_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        _main(["--version"], [])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("fgo-svc ")


@pytest.mark.parametrize("argv", [["--bogus"], ["extra"], ["-x", "1"]])
def test_unknown_arguments_give_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        _main(argv, [])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fgo-svc: unrecognized arguments")
    assert "--help" in err


def test_invalid_setting_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kubeconfig: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("TEST_MODE", "c")
    started: list[_Settings] = []
    assert _main([], started) == 2
    err = capsys.readouterr().err
    assert err == "svc: invalid setting: TEST_MODE='c': allowed values are a, b\n"
    assert not started


def test_missing_kube_config_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    started: list[_Settings] = []
    assert _main([], started) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("svc: no Kubernetes API configuration")
    assert str(tmp_path / "absent") in captured.err and "set KUBECONFIG" in captured.err
    assert "Traceback" not in captured.out + captured.err
    assert not started


def test_valid_configuration_starts_the_service(
    monkeypatch: pytest.MonkeyPatch, kubeconfig: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("TEST_COUNT", "5")
    started: list[_Settings] = []
    assert _main([], started) == 7
    assert started == [_Settings(kubeconfig=str(kubeconfig), mode="a", count=5)]
