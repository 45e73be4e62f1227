"""The bad-input battery (experiments/bench/bad_inputs.py): its classification of outcomes, its
data-loss check, and one real case run end to end through the script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench"
sys.path.insert(0, str(BENCH))

from bad_input_cases import Case, Result  # noqa: E402
from bad_inputs import classify, lost_files, snapshot  # noqa: E402

REFUSE = Case("values", "x", ["space"])
RECOVER = Case("integrity", "y", ["run"], ok=("clear", "recovered"), check=lambda ctx: None)


def result(rc: int | None, err: str = "", out: str = "", timed_out: bool = False) -> Result:
    return Result(["space"], rc, out, err, 1.0, timed_out)


@pytest.mark.parametrize("res, kw, want", [
    (result(2, "hwnas: error: train.steps: must be > 0\n"), {}, "clear"),
    (result(2, "usage: hwnas space ...\nhwnas space: error: argument -n: invalid int value: 'x'\n"), {}, "clear"),
    (result(2, "hwnas space: error: argument -n: expected an integer (see `hwnas space --help`)\n"), {}, "clear"),
    (result(2, "hwnas: error: a\nhwnas: error: b\n"), {}, "unclear"),
    (result(2, "hwnas: error: a\n  more of the message\n"), {}, "unclear"),
    (result(1, "something failed\n"), {}, "unclear"),
    (result(1, "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: bad\n"), {}, "traceback"),
    (result(0, "", "done"), {}, "accepted"),
    (result(-11), {}, "crash"),
    (result(None, timed_out=True), {}, "hang"),
    (result(2, "hwnas: error: x\n"), {"lost": ["run/a changed"]}, "data-lost"),
    (result(2, "hwnas: error: x\n"), {"orphans": 2}, "orphans"),
    (result(0), {"flags": [("budget-exceeded", "130 trials for budget 120")]}, "budget-exceeded"),
    (result(2, "hwnas: error: x\n"), {"code_ran": True}, "code-ran"),
])
def test_classify(res, kw, want):
    assert classify(REFUSE, res, **kw)[0] == want


def test_classify_recovery_needs_the_right_result():
    assert classify(RECOVER, result(0), recovered=None) == ("recovered", "exit 0, result right")
    outcome, line = classify(RECOVER, result(0), recovered="front.json still holds the damage")
    assert outcome == "accepted" and "still holds the damage" in line
    assert classify(REFUSE, result(0), recovered=None)[0] == "accepted"  # recovery not acceptable for this case


def test_clear_line_is_the_error_line():
    assert classify(REFUSE, result(2, "warning: slow\nhwnas: error: x.y: bad\n")) == ("clear", "hwnas: error: x.y: bad")


def test_an_error_whose_fix_is_the_failed_command_is_unclear():
    err = "hwnas: error: latency/cpu-torch.json: truncated; rebuild it with `hwnas latency`\n"
    assert classify(REFUSE, Result(["latency", "c.yaml"], 2, "", err, 1.0))[0] == "unclear"
    assert classify(REFUSE, Result(["search", "c.yaml"], 2, "", err, 1.0))[0] == "clear"
    delete = "hwnas: error: latency/cpu-torch.json: truncated; delete it and run `hwnas latency CONFIG`\n"
    assert classify(REFUSE, Result(["latency", "c.yaml"], 2, "", delete, 1.0))[0] == "clear"
    twice = ("hwnas: error: train/checkpoint.safetensors: changed since `hwnas train CONFIG` wrote it; delete it and run "
             "`hwnas train CONFIG`\n")
    assert classify(REFUSE, Result(["train", "c.yaml"], 2, "", twice, 1.0))[0] == "clear"
    again = "hwnas: error: x.json: deleted by `hwnas train CONFIG`; run `hwnas train CONFIG` to write it again\n"
    assert classify(REFUSE, Result(["train", "c.yaml"], 2, "", again, 1.0))[0] == "unclear"


def test_traceback_line_is_the_exception():
    err = "Traceback (most recent call last):\n  File \"a.py\", line 3, in f\n    json.loads(s)\njson.decoder.JSONDecodeError: Expecting value\n"
    assert classify(REFUSE, result(1, err)) == ("traceback", "json.decoder.JSONDecodeError: Expecting value")


def test_lost_files(tmp_path):
    (tmp_path / "kept").write_text("same\n")
    (tmp_path / "log").write_text("line 1\n")
    (tmp_path / "edited").write_text("abc\n")
    (tmp_path / "gone").write_text("x\n")
    before = snapshot(tmp_path)
    (tmp_path / "log").write_text("line 1\nline 2\n")  # appended: not lost
    (tmp_path / "edited").write_text("abd\n")
    (tmp_path / "gone").unlink()
    (tmp_path / "new").write_text("new files are not lost\n")
    assert sorted(lost_files(tmp_path, before)) == ["edited changed", "gone vanished"]


def test_script_runs_one_case(tmp_path):
    """One config-only case through the script: its row and summary land in results.json/.md."""
    proc = subprocess.run([sys.executable, str(BENCH / "bad_inputs.py"), "--work", str(tmp_path), "--only",
                           "^mistakes/config file missing$"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    [row] = data["cases"]
    assert row["outcome"] == "clear" and row["acceptable"]
    assert "missing.yaml" in row["line"] and row["line"].startswith("hwnas: error:")
    assert data["summary"]["outcomes"] == {"clear": 1}
    assert "| mistakes | config file missing |" in (tmp_path / "results.md").read_text()
    assert not (tmp_path / "master").exists()  # a config-only case needs no finished run
