"""`run_isolated`: a function in a fresh process, its result or its error back in the parent, and
no child left running when the parent is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from hwnas.core.errors import HwnasError
from hwnas.core.isolate import run_isolated
from hwnas.search_space import ArchError


def _pid_and(x: int) -> tuple[int, int]:
    return os.getpid(), x * 2


def _raise_arch_error() -> None:
    raise ArchError("embed_dim", "96 is not one of [64, 128]")


def _raise_unpicklable() -> None:
    class Local(HwnasError):  # a class pickle cannot find by name
        pass

    raise Local("stage: bad thing")


def _crash() -> None:
    os._exit(3)


def test_runs_in_another_process_and_returns_the_result():
    pid, value = run_isolated(_pid_and, 21)
    assert value == 42 and pid != os.getpid()


def test_errors_come_back_with_their_message():
    with pytest.raises(ArchError, match="embed_dim: 96 is not one of"):
        run_isolated(_raise_arch_error)
    with pytest.raises(HwnasError, match="stage: bad thing"):
        run_isolated(_raise_unpicklable)
    with pytest.raises(RuntimeError, match="died .exit code 3"):
        run_isolated(_crash)


def test_child_dies_with_a_killed_parent(tmp_path):
    marker = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import os, time
        from hwnas.core.isolate import run_isolated
        from tests.test_isolate import _sleep_forever
        run_isolated(_sleep_forever, {str(marker)!r})
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=os.getcwd())
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    child = int(marker.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "the isolated child outlived its killed parent"


def _sleep_forever(marker: str) -> None:
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    time.sleep(600)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _warn() -> int:
    import warnings

    from hwnas.latency.errors import FingerprintWarning

    warnings.warn("latency table t.json was measured on another device\n(cpu: a, here b)", FingerprintWarning, stacklevel=1)
    warnings.warn("overflow somewhere", RuntimeWarning, stacklevel=1)
    return 1


def test_the_cli_s_one_line_warnings_hold_in_the_isolated_process_too(capfd, monkeypatch):
    import warnings

    from hwnas.core.errors import warning_line

    monkeypatch.setattr(warnings, "formatwarning", warning_line)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert run_isolated(_warn) == 1
    err = capfd.readouterr().err
    assert "hwnas: warning: latency table t.json was measured on another device (cpu: a, here b)\n" in err
    assert "hwnas: warning: overflow somewhere (RuntimeWarning)\n" in err
    assert "warnings.warn(" not in err and "test_isolate.py" not in err  # no source line, no file name
