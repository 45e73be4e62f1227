"""A battery of bad inputs and faults, and how hwnas reacts to each: a clear one-line error, a
traceback, bad input silently accepted, data lost, code run from a file, processes left running,
a search past its budget, or a hang.

It builds one finished tiny run (tests/tiny.py's experiment, `hwnas run`, about a minute), then runs
every case (bad_input_cases.py) on a fresh copy of that run and of its config: damaged artifacts
(missing, truncated, byte-flipped, edited at the same size, not JSON, non-finite) read by the next
stage, another experiment's command on the run, bad config and command-line values, tampered files
that would run code, kills of running commands, plain user mistakes. Each case declares what is
acceptable for it (usually `clear`); the figures are the count of each outcome.

Outcomes:
    clear            non-zero exit, exactly one `hwnas: error:` line (the last), no traceback
    recovered        exit 0 where recovery is acceptable and the result is right (e.g. a torn log line dropped)
    accepted         exit 0 on input that should be refused, or a damaged artifact used silently
    traceback        a Python traceback on stderr
    unclear          non-zero exit without exactly one final `hwnas: error:` line, or one whose fix is to run
                     the very command that failed (not after deleting the file it names)
    crash            killed by a signal it did not get from the battery
    data-lost        a file that existed changed or vanished (a failed command, or another experiment's one)
    code-ran         the marker file that smuggled code would create appeared
    orphans          processes of the case still running after its command ended
    budget-exceeded  a resumed search holds more trials than its budget
    hang             no exit within the case's timeout

    python experiments/bench/bad_inputs.py [--only PATTERN] [--jobs 1] [--keep] [--write]
        [--work runs/bench-bad-inputs] [--reuse-master] [--list] [--baseline OLD/results.json --label TEXT]
        [--from-results runs/bench-bad-inputs/results.json]

Results: <work>/results.json and <work>/results.md (every case: class, case, command, outcome, the
error line or the traceback's last line); `--write` also puts the summary in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_input_cases import STAGES, Case, Ctx, Proc, Result, cases, kill_pids, leftovers  # noqa: E402
from common import ROOT, command, machine, write_section  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.tiny import HWNAS, stdlib_text, tiny_config, write_config  # noqa: E402

OUTCOMES = ("clear", "recovered", "accepted", "traceback", "unclear", "crash", "data-lost", "code-ran", "orphans",
            "budget-exceeded", "hang")
ERROR_LINE = re.compile(r"^hwnas(?: [a-z]+)?: error: ")  # ours, or argparse's `hwnas train: error: ...`


# --- the master run -----------------------------------------------------------------------------------
def build_master(work: Path, reuse: bool) -> Path:
    """work/master/run: one finished tiny run (every stage), made once; cases copy it."""
    root = work / "master"
    run = root / "run"
    if reuse and (run / "pipeline.json").is_file():
        stages = json.loads((run / "pipeline.json").read_text()).get("stages", {})
        if all(s in stages for s in STAGES):
            print(f"reusing the finished tiny run {run}")
            return run
    shutil.rmtree(root, ignore_errors=True)
    config = write_config(root / "tiny.yaml", tiny_config(run, stdlib_text(root / "text")))
    print(f"building the finished tiny run {run} (about a minute) ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([*HWNAS, "run", str(config), "--no-progress"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        sys.exit(f"the tiny run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"built in {time.perf_counter() - t0:.0f} s")
    return run


# --- what a command changed ------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """(size, sha256) of every file under `root`."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            b = p.read_bytes()
            out[str(p.relative_to(root))] = (len(b), hashlib.sha256(b).hexdigest())
    return out


def lost_files(root: Path, before: dict[str, tuple[int, str]]) -> list[str]:
    """Files of `before` that vanished or changed; a file that only grew (its old bytes a prefix of
    the new ones: an appended log line or record) is not lost."""
    lost = []
    for rel, (size, digest) in before.items():
        p = root / rel
        if not p.is_file():
            lost.append(f"{rel} vanished")
            continue
        b = p.read_bytes()
        if hashlib.sha256(b).hexdigest() == digest:
            continue
        if len(b) > size and hashlib.sha256(b[:size]).hexdigest() == digest:
            continue
        lost.append(f"{rel} changed")
    return lost


# --- classification ----------------------------------------------------------------------------------------
def last_traceback_line(err: str) -> str:
    """The exception line of the last traceback in `err`."""
    lines = err[err.rfind("Traceback"):].splitlines()
    exc = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)?(: |$)", ln)
           and not ln.startswith("Traceback")]
    return (exc[-1] if exc else lines[-1] if lines else "").strip()


def classify(case: Case, res: Result, *, code_ran: bool = False, orphans: int = 0, lost: list[str] | None = None,
             flags: list[tuple[str, str]] | None = None, recovered: str | None = None) -> tuple[str, str]:
    """(outcome, the line that shows it). `recovered`: the case's check on an exit 0 (None: the
    result is right; a reason otherwise); only consulted when the case accepts recovery."""
    flags = list(flags or [])
    if code_ran:
        return "code-ran", "the marker file that the tampered input's code writes appeared"
    if res.timed_out:
        return "hang", f"no exit within {case.timeout:.0f} s"
    if orphans:
        flags.insert(0, ("orphans", f"{orphans} processes of the case still running after it ended"))
    for outcome in ("orphans", "budget-exceeded"):
        if any(o == outcome for o, _ in flags):
            return outcome, "; ".join(f"{o}: {why}" for o, why in flags)
    if lost:
        return "data-lost", "; ".join(lost[:4]) + (f" (and {len(lost) - 4} more)" if len(lost) > 4 else "")
    if "Traceback" in res.err:
        return "traceback", last_traceback_line(res.err)
    if res.rc == 0:
        if "recovered" in case.ok and case.check is not None:
            return ("recovered", "exit 0, result right") if recovered is None else ("accepted", f"exit 0, but {recovered}")
        out = [ln.strip() for ln in res.out.splitlines() if re.search(r"[A-Za-z]{3}", ln)]
        return "accepted", "exit 0" + (f": {out[0][:200]}" if out else "")
    if res.rc is not None and res.rc < 0:
        return "crash", f"killed by signal {-res.rc}"
    err = [ln for ln in res.err.splitlines() if ln.strip()]
    errors = [ln for ln in err if ERROR_LINE.match(ln)]
    if len(errors) == 1 and err[-1] == errors[0]:
        # the fix is the last command the line names ("changed since `hwnas train CONFIG` wrote it; delete it and run
        # `hwnas train CONFIG`" names it twice): unclear when it is what just failed, and not after deleting the file
        names = list(re.finditer(r"(delete \S+ and run )?`hwnas (\w+)\b(?! --help)", errors[0]))  # not a pointer to help
        fix = names[-1] if names and res.args and names[-1].group(2) == res.args[0] else None
        if fix and not fix.group(1):
            return "unclear", f"the error's fix is the command that failed: {errors[0]}"
        return "clear", errors[0]
    if errors:
        return "unclear", f"{len(errors)} error lines, then {len(err) - 1 - err.index(errors[-1])} more lines: {errors[-1][:300]}"
    return "unclear", f"exit {res.rc}: {(err or ['(no stderr)'])[-1][:300]}"


# --- one case -----------------------------------------------------------------------------------------------
def run_case(i: int, case: Case, work: Path, master: Path | None, text: Path, mem_gb: float, keep: bool) -> dict[str, Any]:
    folder = work / "cases" / f"{i:03d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ctx = Ctx(folder, master or folder / "no-master", text, {}, f"{uuid.uuid4().hex[:12]}", mem_gb)
    ctx.cfg = tiny_config(ctx.run, text)
    ctx.file.write_text("a regular file\n")
    if not case.fresh:
        shutil.copytree(master, ctx.run, symlinks=True)
    row: dict[str, Any] = {"class": case.cls, "case": case.name, "ok": list(case.ok), "why": case.why}
    try:
        if case.setup:
            case.setup(ctx)
        ctx.write_config()
    except Exception as e:  # a battery bug, not an hwnas outcome
        return row | {"outcome": "setup-failed", "line": f"{type(e).__name__}: {e}", "command": "", "seconds": 0.0,
                      "acceptable": False, "rc": None, "notes": []}
    before = snapshot(folder)
    if case.driver:
        res = case.driver(ctx, case)
    else:
        res = Proc(ctx, ctx.fmt(case.cmd)).wait(case.timeout)
    stray = leftovers(ctx.token, 5.0)
    kill_pids(stray)
    failed = res.timed_out or res.rc != 0
    lost = lost_files(folder, before) if (failed or case.foreign) and not case.driver else []
    recovered = case.check(ctx) if res.rc == 0 and not res.timed_out and case.check else None
    outcome, line = classify(case, res, code_ran=ctx.marker.exists(), orphans=len(stray), lost=lost, flags=ctx.flags,
                             recovered=recovered)
    shown = " ".join(a.replace(str(folder), "$CASE") for a in res.args)
    row |= {"outcome": outcome, "acceptable": outcome in case.ok, "line": line, "command": f"hwnas {shown}",
            "seconds": round(res.seconds, 1), "rc": res.rc, "notes": ctx.notes,
            "stderr_tail": res.err[-1500:] if outcome not in ("clear", "recovered") else ""}
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return row


# --- the report ------------------------------------------------------------------------------------------------
def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts = Counter(r["outcome"] for r in rows)
    by_class: dict[str, Counter] = {}
    for r in rows:
        by_class.setdefault(r["class"], Counter())[r["outcome"]] += 1
    return {"cases": len(rows), "not_acceptable": sum(not r["acceptable"] for r in rows),
            "outcomes": {o: counts[o] for o in (*OUTCOMES, "setup-failed") if counts[o]},
            "by_class": {c: dict(v) for c, v in by_class.items()}}


def _cell(text: str, limit: int = 220) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + "...") if len(text) > limit else text.replace("|", "\\|")


def markdown(rows: list[dict[str, Any]], s: dict[str, Any]) -> str:
    out = [f"{s['cases']} cases: " + ", ".join(f"{n} {o}" for o, n in s["outcomes"].items())
           + f"; {s['not_acceptable']} with an outcome their case does not accept.", "",
           "| outcome | count |", "| --- | ---: |", *[f"| {o} | {n} |" for o, n in s["outcomes"].items()], "",
           "| class | case | command | outcome | ok | line |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        mark = r["outcome"] if r["acceptable"] else f"**{r['outcome']}**"
        out.append(f"| {r['class']} | {_cell(r['case'], 90)} | `{_cell(r['command'], 120)}` | {mark} | {'/'.join(r['ok'])} | "
                   f"{_cell(r['line'])} |")
    return "\n".join(out) + "\n"


def benchmarks_body(rows: list[dict[str, Any]], s: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    body = [f"Command: `{command()}`  ", f"Machine: {machine()}", "",
            f"{s['cases']} bad inputs and faults on a finished tiny run: "
            + ", ".join(f"{n} {o}" for o, n in s["outcomes"].items()) + f"; {s['not_acceptable']} not acceptable.", ""]
    if baseline:
        b = baseline["summary"]
        old = {(c["class"], c["case"]) for c in baseline.get("cases", [])}
        new = sum((r["class"], r["case"]) not in old for r in rows)
        added = f"; {new} cases added since are counted only now" if new and old else ""
        body += [f"Against `--baseline` ({b['cases']} cases of the same battery on the code before: {b.get('label', 'baseline')}"
                 f"{added}):", "",
                 "| outcome | before | now |", "| --- | ---: | ---: |"]
        body += [f"| {o} | {b['outcomes'].get(o, 0)} | {s['outcomes'].get(o, 0)} |" for o in (*OUTCOMES, "setup-failed")
                 if b["outcomes"].get(o) or s["outcomes"].get(o)]
        body += [f"| not acceptable | {b['not_acceptable']} | {s['not_acceptable']} |", ""]
    body += ["| class | " + " | ".join(OUTCOMES) + " |", "| --- |" + " ---: |" * len(OUTCOMES)]
    for c, counts in s["by_class"].items():
        body.append(f"| {c} | " + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |")
    bad = [r for r in rows if not r["acceptable"]]
    if bad:
        body += ["", "Not acceptable:", ""]
        body += [f"- {r['outcome']}: {r['class']}/{_cell(r['case'], 100)}: {_cell(r['line'], 160)}" for r in bad]
    return "\n".join(body)


def main() -> None:
    # a shell's `cmd &` starts it with SIGINT ignored, which every command it runs would inherit (and the
    # Ctrl-C cases would test nothing): its commands get the default Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-bad-inputs"), help="work folder (master run, cases, results)")
    p.add_argument("--only", default=None, help="run the cases whose 'class/name' matches this regular expression")
    p.add_argument("--jobs", type=int, default=1, help="cases run at once (each case has its own folder)")
    p.add_argument("--keep", action="store_true", help="keep every case's folder (work/cases/NNN)")
    p.add_argument("--reuse-master", action="store_true", help="reuse a finished master run in the work folder")
    p.add_argument("--mem-gb", type=float, default=6.0, help="address-space limit of each hwnas process (GiB)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--write", action="store_true", help="also write the summary to BENCHMARKS.md")
    p.add_argument("--baseline", default=None, help="results.json of an earlier run (the code before a fix) to compare with")
    p.add_argument("--label", default=None, help="with --baseline: what the baseline ran on, e.g. a commit")
    p.add_argument("--from-results", default=None, help="do not run: report (and --write) the results.json of a finished run")
    args = p.parse_args()
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    if baseline and args.label:
        baseline["summary"]["label"] = args.label
    if args.from_results:
        done = json.loads(Path(args.from_results).read_text())
        print(markdown(done["cases"], done["summary"]))
        if args.write:
            write_section("Bad inputs and faults", benchmarks_body(done["cases"], done["summary"], baseline))
        return

    selected = [(i, c) for i, c in enumerate(cases()) if not args.only or re.search(args.only, c.id, re.I)]
    if args.list or not selected:
        for i, c in selected:
            print(f"{i:03d} {c.id}  [{'/'.join(c.ok)}]")
        print(f"{len(selected)} cases")
        return
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    master = build_master(work, args.reuse_master) if any(not c.fresh for _, c in selected) else None
    text = master.parent / "text" if master else stdlib_text(work / "text")
    t0 = time.perf_counter()
    rows: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {pool.submit(run_case, i, c, work, master, text, args.mem_gb, args.keep): i for i, c in selected}
        for n, f in enumerate(as_completed(futures), 1):
            r = rows[futures[f]] = f.result()
            flag = "" if r["acceptable"] else "  <-- not acceptable"
            print(f"[{n}/{len(selected)}] {r['outcome']:<15} {r['class']}/{r['case']} ({r['seconds']} s){flag}", flush=True)
    ordered = [rows[i] for i, _ in selected]
    s = summary(ordered)
    s["seconds"] = round(time.perf_counter() - t0)
    (work / "results.json").write_text(json.dumps({"summary": s, "cases": ordered}, indent=1) + "\n")
    (work / "results.md").write_text(markdown(ordered, s))
    print(f"\n{s['cases']} cases in {s['seconds']} s: " + ", ".join(f"{n} {o}" for o, n in s["outcomes"].items()))
    for c, counts in s["by_class"].items():
        print(f"  {c:<11} " + ", ".join(f"{n} {o}" for o, n in counts.items()))
    print(f"{s['not_acceptable']} cases with an outcome they do not accept; results: {work / 'results.md'}")
    if args.write:
        write_section("Bad inputs and faults", benchmarks_body(ordered, s, baseline))


if __name__ == "__main__":
    main()
