"""Processes: a killed search leaves no worker running, and a search keeps to its budget.

- `hwnas search --workers 2` killed (SIGKILL, SIGTERM, Ctrl-C) mid-search: no worker outlives it,
  the study stops growing, and the resumed search ends with exactly `budget` complete trials.
- `OptunaEngine.fill`, the loop every worker runs: several processes racing for the last trials,
  RUNNING trials left by a killed process, and another process's live trial never push a study
  past its budget, and a dead trial never makes a resume wait.
- Data-parallel training: the ranks of `torchrun ... hwnas train` die with a killed agent.
- `die_with_parent` / `wait_all`: a child whose parent died before it could arrange to die with it
  exits at once; a failing child stops its siblings.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml

from hwnas.core.isolate import Isolated, wait_all
from hwnas.search.optuna_engine import OptunaEngine, open_storage
from hwnas.search.pareto import ParetoFront
from tests.test_search import SPACE, analytic
from tests.tiny import HWNAS, hwnas, stdlib_text, tiny_config, write_config

COMPLETE, RUNNING, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL


# --- processes ---------------------------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """Process `pid`'s start time, None once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every living descendant of `root`."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found and (start := _start_time(child)):
                found[child] = start
                frontier.append(child)
    return found


def _survivors(procs: dict[int, str], wait_s: float = 10) -> list[int]:
    """The processes of `procs` still alive (the same start time) after up to `wait_s` seconds;
    killed, so that a failing test leaves nothing running."""
    deadline = time.time() + wait_s
    while True:
        alive = [pid for pid, start in procs.items() if _start_time(pid) == start]
        if not alive or time.time() > deadline:
            break
        time.sleep(0.1)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return alive


# --- the tiny run, searched by Optuna with two workers ------------------------------------------
# Budgets: enough trials that the search is still running when it is killed (SQLite commits make
# its trials ~0.1-0.5 s each on 2 cores; the journal's are ~20x faster), few enough to resume fast.
# 24 SQLite trials once all completed between the 4th and the signal (a quick machine, 2026-12-03).
BUDGETS = {"sqlite": 60, "journal": 200}


class Search:
    """`hwnas search CONFIG --workers 2` on a copy of the tiny run, engine optuna, in a session of
    its own (so a test can signal its whole process group, as a terminal's Ctrl-C does)."""

    def __init__(self, tiny_run, kind: str):
        self.config, self.run_dir = tiny_run
        self.budget = BUDGETS[kind]
        self.storage = f"journal:{self.run_dir / 'search' / 'study.journal'}" if kind == "journal" else None
        cfg = yaml.safe_load(self.config.read_text())
        cfg["search"].update(engine="optuna", budget=self.budget, population=10, validate_top=0, storage=self.storage)
        self.config.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen | None = None

    def states(self) -> dict[str, int]:
        """{state name: trials} of the run's study; {} before it exists."""
        url = self.storage or f"sqlite:///{self.run_dir / 'search' / 'study.db'}"
        try:
            storage = open_storage(url)
            # the run's one Optuna study (named by its inputs); the tiny run's pymoo search wrote its candidates as another
            names = [s.study_name for s in optuna.get_all_study_summaries(storage) if s.user_attrs.get("engine", "optuna") == "optuna"]
            if not names:
                return {}
            assert len(names) == 1, names
            trials = optuna.load_study(study_name=names[0], storage=storage).get_trials(deepcopy=False)
        except KeyError:  # no study yet
            return {}
        out: dict[str, int] = {}
        for t in trials:
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out

    def start(self, at_least: int = 4) -> dict[int, str]:
        """Start the search; return its descendants (the workers) once its study holds `at_least`
        complete trials."""
        self.stderr = open(self.run_dir.parent / "search.stderr", "w+")  # noqa: SIM115  (closed in stop)
        # a shell's `pytest &` leaves SIGINT ignored, which the search would inherit: it gets the default Ctrl-C
        handler = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.proc = subprocess.Popen([*HWNAS, "search", str(self.config), "--workers", "2", "--no-progress"],
                                         env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                                         stdout=subprocess.DEVNULL, stderr=self.stderr, text=True)
        finally:
            signal.signal(signal.SIGINT, handler)
        deadline = time.time() + 180
        while self.states().get("COMPLETE", 0) < at_least:
            assert self.proc.poll() is None, f"the search ended early ({self.proc.returncode}): {self.error()}"
            assert time.time() < deadline, "no trials after 180 s"
            time.sleep(0.2)
        workers = _descendants(self.proc.pid)
        assert len(workers) >= 2, workers
        # on a loaded machine the study can fill between two polls: then there is nothing left to signal
        assert self.proc.poll() is None and self.states().get("COMPLETE", 0) < self.budget, "the search ended before the signal"
        return workers

    def error(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-3000:]

    def stop(self) -> None:
        """Kill whatever of the search's process group is left (after a failed check)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.stderr.close()

    def stops_growing(self) -> int:
        """The number of trials, after checking it does not change for 2 s."""
        before = sum(self.states().values())
        time.sleep(2)
        after = sum(self.states().values())
        assert after == before, f"trials went on being added after the search was killed: {before} -> {after}"
        return after

    def resume_ends_at_budget(self) -> None:
        t0 = time.time()
        proc = hwnas("search", str(self.config), "--workers", "2", "--no-progress", timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        states = self.states()
        assert states.get("COMPLETE") == self.budget, states
        assert "RUNNING" not in states, states  # the killed run's trials were failed, none left hanging
        summary = yaml.safe_load((self.run_dir / "search" / "summary.json").read_text())
        assert summary["candidates"] <= self.budget  # distinct archs among the first `budget` trials
        assert time.time() - t0 < 150  # no wait for a dead trial (or a lock) to time out


@pytest.fixture
def search(tiny_run, request):
    s = Search(tiny_run, request.param)
    yield s
    s.stop()


@pytest.mark.parametrize("sig,search", [(signal.SIGKILL, "sqlite"),
                                        pytest.param(signal.SIGTERM, "journal", marks=pytest.mark.slow)],
                         indirect=["search"], ids=["SIGKILL-sqlite", "SIGTERM-journal"])
def test_killed_search_leaves_no_worker_and_resumes_to_exactly_its_budget(search, sig):
    workers = search.start()
    search.proc.send_signal(sig)
    search.proc.wait(timeout=30)
    assert search.proc.returncode == -sig, search.error()
    assert not _survivors(workers), f"workers outlived the search killed by {sig.name}"
    search.stops_growing()
    # killed before its budget was complete (the trials the workers held at the kill may bring the count to it)
    assert search.states().get("COMPLETE", 0) < search.budget
    search.resume_ends_at_budget()


@pytest.mark.slow
@pytest.mark.parametrize("search", ["sqlite"], indirect=True)
def test_ctrl_c_stops_the_workers(search):
    """Ctrl-C in a terminal reaches the whole process group."""
    workers = search.start()
    os.killpg(search.proc.pid, signal.SIGINT)
    search.proc.wait(timeout=60)
    assert search.proc.returncode == 130 and "hwnas: interrupted" in search.error(), search.error()
    assert not _survivors(workers), "workers outlived the interrupted search"
    search.stops_growing()


# --- fill: the budget, whoever else fills the study ----------------------------------------------
def _fill(storage: str, budget: int, worker: int, studies: int = 1) -> None:
    """`fill` each of `studies` studies ("hwnas", "hwnas-1", ...) of `storage` to `budget` trials."""
    for i in range(studies):
        name = "hwnas" if i == 0 else f"hwnas-{i}"
        OptunaEngine(SPACE, "nsga2", storage, study_name=name, population=10, seed=0).fill(analytic(), budget, worker=worker)


def _trials(storage: str, name: str = "hwnas"):
    return optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials(deepcopy=False)


def _count(trials, state) -> int:
    return sum(t.state == state for t in trials)


def _storages(tmp_path) -> list[str]:
    return [f"sqlite:///{tmp_path / 'study.db'}", f"journal:{tmp_path / 'study.journal'}"]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_racing_workers_fill_exactly_the_budget(tmp_path, kind):
    """4 processes fill 6 studies in turn, each to 8 trials: 6 races for the last trials."""
    storage = dict(zip(["sqlite", "journal"], _storages(tmp_path), strict=True))[kind]
    OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).study(analytic())  # the schema, once
    wait_all([Isolated(_fill, storage, 8, i, 6) for i in range(4)])
    for name in ["hwnas"] + [f"hwnas-{i}" for i in range(1, 6)]:
        trials = _trials(storage, name)
        assert (_count(trials, COMPLETE), _count(trials, RUNNING)) == (8, 0), name
        # a trial refused at the end was refused before it evaluated anything
        assert all(t.user_attrs.get("over_budget") and not t.params for t in trials if t.state == FAIL)


def test_racing_workers_on_postgresql(postgres_url):
    import sqlalchemy

    with sqlalchemy.create_engine(postgres_url).begin() as conn:  # a fresh database for this study
        conn.execute(sqlalchemy.text("drop schema if exists processes cascade; create schema processes"))
    url = f"{postgres_url}?options=-csearch_path%3Dprocesses"
    OptunaEngine(SPACE, "nsga2", url, population=10, seed=0).study(analytic())
    wait_all([Isolated(_fill, url, 24, i) for i in range(3)])
    trials = _trials(url)
    assert _count(trials, COMPLETE) == 24 and _count(trials, RUNNING) == 0


KILLED_WORKER = textwrap.dedent("""
    import os, signal, sys
    from hwnas.search.optuna_engine import OptunaEngine
    from tests.test_search import SPACE, analytic
    engine = OptunaEngine(SPACE, "nsga2", sys.argv[1], population=10, seed=0)
    study = engine.study(analytic())
    engine.fill(analytic(), int(sys.argv[2]), study=study)
    for _ in range(3):
        engine._ask(study)  # trials started, then the process is killed
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_trials_of_a_killed_process_neither_count_nor_block(tmp_path, kind):
    storage = dict(zip(["sqlite", "journal"], _storages(tmp_path), strict=True))[kind]
    proc = subprocess.run([sys.executable, "-c", KILLED_WORKER, storage, "10"], capture_output=True, text=True, cwd=Path.cwd())
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert _count(_trials(storage), RUNNING) == 3
    t0 = time.time()
    front = OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).run(analytic(), 25, ParetoFront(["flops", "params"], [3e8, 1.2e6]))
    assert time.time() - t0 < 30  # not a wait for the dead trials to time out
    trials = _trials(storage)
    assert _count(trials, COMPLETE) == 25 and _count(trials, RUNNING) == 0 and _count(trials, FAIL) == 3
    assert len(front.candidates) == 25


def _hold_a_trial(storage: str):
    """A RUNNING trial of this (living) process, as another worker holds one."""
    engine = OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0)
    study = engine.study(analytic())
    return engine, study, engine._ask(study)


@pytest.mark.parametrize("outcome", ["complete", "fail"])
def test_a_live_trial_of_another_worker_counts_until_it_ends(tmp_path, outcome):
    """Budget 12: another worker's trial is RUNNING while this one fills the rest. This one stops at
    11 and waits; the study ends at 12 whether that trial completes or fails."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    engine, study, held = _hold_a_trial(storage)
    filler = threading.Thread(target=_fill, args=(storage, 12, 1))
    filler.start()
    deadline = time.time() + 60
    while _count(_trials(storage), COMPLETE) < 11 and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    assert filler.is_alive() and _count(_trials(storage), COMPLETE) == 11  # waiting on the held trial, not past it
    if outcome == "complete":
        engine._evaluate(study, held, engine.objective(analytic()), None)
    else:
        study.tell(held, state=FAIL)
    filler.join(timeout=60)
    assert not filler.is_alive()
    trials = _trials(storage)
    assert _count(trials, COMPLETE) == 12 and _count(trials, RUNNING) == 0


def test_an_ownerless_running_trial_is_dead_after_a_while(tmp_path, monkeypatch):
    """A trial without a recorded owner (its process killed right after creating it, or an older
    hwnas) counts as live only for STALE_AFTER_S."""
    from hwnas.search import optuna_engine as engines

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).study(analytic())
    study.ask()  # RUNNING, no owner
    monkeypatch.setattr(engines, "STALE_AFTER_S", 3.0)
    t0 = time.time()
    _fill(storage, 6, 0)
    trials = _trials(storage)
    assert _count(trials, COMPLETE) == 6 and _count(trials, FAIL) == 1 and _count(trials, RUNNING) == 0
    assert time.time() - t0 >= 2  # it counted while young (5 filled, then a wait)


def test_a_study_past_its_budget_gives_the_first_budget_trials(tmp_path):
    """A study filled past the budget (an older hwnas, or a lowered budget) adds nothing and the
    front holds its first `budget` trials."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).optimize(analytic(), 15)
    front = OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).run(analytic(), 10, ParetoFront(["flops", "params"], [3e8, 1.2e6]))
    assert len(_trials(storage)) == 15
    assert [c.extra["trial"] for c in front.candidates] == list(range(10))


def test_a_stale_running_trial_is_failed_not_completed_later(tmp_path):
    """A trial taken for dead is FAIL for good: its owner's late result is dropped, not counted."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    engine, study, held = _hold_a_trial(storage)
    study.tell(held.number, state=FAIL)  # as `fill` does to a dead owner's trial
    engine._evaluate(study, held, engine.objective(analytic()), None)  # the owner finishes anyway
    (trial,) = _trials(storage)
    assert trial.state == FAIL


# --- data-parallel training ----------------------------------------------------------------------
def test_ddp_ranks_die_with_a_killed_torchrun(tmp_path):
    """torchrun starts the ranks in sessions of their own: killed, it used to leave them training."""
    import socket

    cfg = tiny_config(tmp_path / "run", stdlib_text(tmp_path / "text"))
    cfg["train"].update(steps=5000, ckpt_every=100, eval_every=5000)
    config = write_config(tmp_path / "tiny.yaml", cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hwnas_bin = str(Path(sys.executable).parent / "hwnas")
    agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                              f"--master_port={port}", hwnas_bin, "train", str(config), "--no-progress"],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "train" / "metrics.jsonl"
    ranks: dict[int, str] = {}
    try:
        deadline = time.time() + 180
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert agent.poll() is None, agent.communicate()[1][-3000:]
            assert time.time() < deadline, "no training steps after 180 s"
            time.sleep(0.3)
        ranks = _descendants(agent.pid)
        assert len(ranks) >= 2, ranks
    finally:
        agent.kill()
        agent.communicate(timeout=30)
    assert not _survivors(ranks), "the ranks outlived their killed torchrun agent"
    steps = len(metrics.read_text().splitlines())
    time.sleep(2)
    assert len(metrics.read_text().splitlines()) == steps


# --- die_with_parent, wait_all -------------------------------------------------------------------
def test_a_child_whose_parent_is_already_gone_exits_at_once():
    """The parent died before the child called die_with_parent: it must not run on."""
    code = "from hwnas.core.isolate import die_with_parent; die_with_parent(1); print('ran on')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "ran on" not in proc.stdout


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _fail_after(seconds: float) -> None:
    time.sleep(seconds)
    raise ValueError("worker 2 failed")


def test_wait_all_returns_in_order_and_a_failing_child_stops_the_others():
    assert wait_all([Isolated(_sleep, 0.5), Isolated(_sleep, 0.1)]) == [0.5, 0.1]
    children = [Isolated(_sleep, 120), Isolated(_fail_after, 0.5)]
    t0 = time.time()
    with pytest.raises(ValueError, match="worker 2 failed"):
        wait_all(children)
    assert time.time() - t0 < 30 and not children[0].process.is_alive()


def test_an_age_decides_only_for_an_owner_this_machine_cannot_check():
    """A local owner is checked by its process, however old the trial; others by the trial's age."""
    from hwnas.search.optuna_engine import _is_stale, _pid_namespace, trial_owner

    now, old = datetime.datetime.now(), datetime.datetime.now() - datetime.timedelta(hours=1)

    def trial(owner, start):
        return optuna.trial.FrozenTrial(0, RUNNING, None, start, None, {}, {}, {"owner": owner} if owner else {}, {}, {}, 0)

    here, ns = trial_owner(), _pid_namespace()
    dead = {**here, "pid": 2**22 + 7}  # no such pid
    remote = {**here, "namespace": "another-machine"}
    assert not _is_stale(trial(here, old), ns, now) and _is_stale(trial(dead, now), ns, now)
    assert not _is_stale(trial(remote, now), ns, now) and _is_stale(trial(remote, old), ns, now)
    assert not _is_stale(trial(None, now), ns, now) and _is_stale(trial(None, old), ns, now)
