"""The Optuna engine: NSGA-II, NSGA-III, multi-objective TPE or random sampling over
`SearchSpace.suggest` (a dynamic space: per-layer parameters only for active layers).

The study lives in an Optuna storage (SQLite or a journal file in the run dir, or any URL such as
PostgreSQL), so several processes share one study and an interrupted search resumes it.
`OptunaEngine.fill` keeps the study to its budget however many processes fill it and however the
last run ended.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from hwnas.core.isolate import Isolated, wait_all
from hwnas.search_space import SearchSpace, legacy_seed

from .engines import OPTUNA_ALGORITHMS, SearchEngine, SearchError, candidates_of, register_engine
from .objectives import ObjectiveSet
from .pareto import Candidate, ParetoFront


# --- Optuna -----------------------------------------------------------------------------------
def storage_url(cfg, run_dir: str | Path) -> str:
    """The run's Optuna storage: `search.storage`, else the SQLite file in the run's search folder."""
    return cfg.storage or default_storage(Path(run_dir) / "search")


def unopenable(url: str, study_name: str, e: Exception) -> SearchError:
    """The one-line refusal of a study that cannot be opened (a damaged database, a server that refuses)."""
    reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    return SearchError(f"search.storage {shown_storage(url)}: cannot open the Optuna study {study_name!r} ({reason}); "
                       "repair or delete it, or set search.storage to another")


def default_storage(run_dir: str | Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


def _journal_lock(path: Path):
    """The journal file's lock as an `flock` on `<path>.flock`, which the kernel releases when its
    holder dies: a worker killed while appending (the lock is held through an fsync) does not leave
    the study locked, as Optuna's default symlink lock does for its 30 s grace period."""
    import fcntl

    from optuna.storages.journal import JournalFileOpenLock

    class FlockLock(JournalFileOpenLock):  # (Optuna's lock base class is not public: reuse its interface)
        def __init__(self) -> None:
            super().__init__(str(path))
            self.fd: int | None = None

        def acquire(self) -> bool:
            fd = os.open(f"{path}.flock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            return True

        def release(self) -> None:
            fd, self.fd = self.fd, None
            if fd is not None:
                os.close(fd)  # closing the only descriptor drops the lock

    return FlockLock()


def open_storage(url: str):
    """An Optuna storage from a URL: `journal:<path>` for a journal file, else an RDB URL."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=_journal_lock(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url)  # no heartbeat: `fill` tells a dead trial by its owner (see `_is_stale`)


def shown_storage(url: str | None) -> str:
    """A storage URL fit for a message: a file's path, or the URL with its password hidden."""
    if not url:
        return "(in memory)"
    if url.startswith(("journal:", "sqlite:///")):
        return url.split(":", 1)[1].removeprefix("///")
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 (unparseable: say nothing of it)
        return "(the configured URL)"


def make_sampler(algorithm: str, seed: int, population: int):
    """An Optuna sampler; constraints reach it through `trial.set_constraint` (Optuna >= 5)."""
    import optuna

    seed = legacy_seed(seed)
    if algorithm == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if algorithm == "nsga3":
        return optuna.samplers.NSGAIIISampler(population_size=population, seed=seed)
    if algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SearchError(f"search.algorithm: {algorithm!r} is not one of {', '.join(OPTUNA_ALGORITHMS)} for the optuna engine")


# A RUNNING trial left by a killed process never finishes: it must neither count against the
# budget nor hold up the end. Each trial records its owner process; a RUNNING trial whose owner
# is gone is failed. An owner on another machine (or none recorded: a process killed between
# creating the trial and recording it) cannot be checked, so such a trial counts as dead once it
# has run this long (an hwnas trial evaluates predictors and tables: milliseconds).
STALE_AFTER_S = 60.0


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot: tells a reused pid apart); None if it is
    gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _pid_namespace() -> str:
    """This kernel's boot and pid namespace: two pids mean the same process only within one. Empty
    where /proc cannot tell (not Linux)."""
    try:
        return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def trial_owner() -> dict:
    """This process, as recorded on each trial it runs (user attr `owner`)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()), "namespace": _pid_namespace()}


def _is_stale(trial, namespace: str, now: datetime.datetime) -> bool:
    """A RUNNING trial that will never finish: its owner process is gone (or, where that cannot be
    checked, it has run longer than STALE_AFTER_S)."""
    owner = trial.user_attrs.get("owner") or {}
    if namespace and owner.get("namespace") == namespace and owner.get("start"):
        return _process_start(owner["pid"]) != owner["start"]
    started = trial.datetime_start or now
    return (now - started).total_seconds() > STALE_AFTER_S


@register_engine
class OptunaEngine(SearchEngine):
    """An Optuna study over `SearchSpace.suggest`. From a config (`from_config`), `workers` > 1
    processes (which die with this one) fill the study's storage together, up to exactly the
    budget of complete trials."""

    name, algorithms, parallel = "optuna", OPTUNA_ALGORITHMS, True

    def __init__(self, space: SearchSpace, algorithm: str = "nsga2", storage: str | None = None,
                 study_name: str = "hwnas", population: int = 50, seed: int = 0):
        super().__init__(space, seed)
        if algorithm not in OPTUNA_ALGORITHMS:
            raise SearchError(f"search.algorithm: {algorithm!r} is not one of {', '.join(OPTUNA_ALGORITHMS)} for the optuna engine")
        self.algorithm, self.storage_url, self.study_name, self.population = algorithm, storage, study_name, population
        self.workers, self.worker_args = 1, None  # set by from_config: what a worker process rebuilds the search from

    @classmethod
    def from_config(cls, space, cfg, run_dir, seed, workers=None, study_name=None) -> OptunaEngine:
        storage = storage_url(cfg, run_dir)
        name = cfg.study_name or study_name or "hwnas"
        engine = cls(space, cfg.algorithm, storage, study_name=name, population=cfg.population, seed=seed)
        engine.workers = workers or cfg.workers
        engine.worker_args = (space.config.model_dump_json(), cfg.model_dump_json(), str(run_dir), seed, name)
        return engine

    def prepare(self, objectives: ObjectiveSet) -> None:
        self.study(objectives)  # a study that cannot be opened is refused before the stage writes anything

    def study(self, objectives: ObjectiveSet, worker: int = 0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = make_sampler(self.algorithm, self.seed + worker, self.population)
        try:
            storage = open_storage(self.storage_url) if self.storage_url else None
            study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=sampler, load_if_exists=True,
                                        directions=["minimize"] * len(objectives.names))
            # what its trials' values mean: the objectives, and the constraints their constraint values measure
            wanted = {"objectives": list(objectives.names), "constraints": list(objectives.constraint_names)}
            held = {"objectives": list(study.metric_names or wanted["objectives"]),
                    "constraints": study.user_attrs.get("constraints", wanted["constraints"])}
            engine = study.user_attrs.get("engine", self.name)  # another engine's candidates, written for optuna-dashboard
            if held == wanted and engine == self.name:
                study.set_metric_names(wanted["objectives"])  # the dashboard's names of its values
                for key, value in {"constraints": wanted["constraints"], "engine": self.name, "algorithm": self.algorithm}.items():
                    if study.user_attrs.get(key) != value:
                        study.set_user_attr(key, value)
        except Exception as e:  # a damaged database, a server that refuses, a study made for other objectives
            raise unopenable(self.storage_url, self.study_name, e) from None
        if engine != self.name:
            raise SearchError(f"search.storage {shown_storage(self.storage_url)}: the Optuna study {self.study_name!r} holds "
                              f"the candidates of a {engine} search, not an optuna one's trials; set search.study_name to "
                              "another name, or delete it")
        for field in ("objectives", "constraints"):
            if held[field] != wanted[field]:  # its trials hold values of other objectives or constraints
                raise SearchError(f"search.storage {shown_storage(self.storage_url)}: the Optuna study {self.study_name!r} "
                                  f"holds trials of the {field} {held[field]}, this search's are {wanted[field]}; delete "
                                  "it, or set search.storage to another")
        return study

    def objective(self, objectives: ObjectiveSet):
        def fn(trial) -> tuple[float, ...]:
            arch = self.space.suggest(trial)
            (cand,) = candidates_of([arch], objectives)
            trial.set_user_attr("key", arch.key())
            trial.set_user_attr("constraints", list(cand.constraints))
            for name, value in zip(objectives.constraint_names, cand.constraints, strict=True):
                trial.set_constraint(name, value)
            for k, v in cand.extra.items():
                trial.set_user_attr(k, v)
            return cand.objectives
        return fn

    def complete_trials(self, study) -> int:
        import optuna

        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))

    def optimize(self, objectives: ObjectiveSet, n_trials: int, worker: int = 0, progress: Callable[[int], None] | None = None,
                 study=None) -> None:
        """Run `n_trials` more trials of the shared study in this process, whatever it already holds
        (`fill` keeps to a budget)."""
        study = study or self.study(objectives, worker)
        objective = self.objective(objectives)
        for _ in range(n_trials):
            self._evaluate(study, self._ask(study), objective, progress)

    def fill(self, objectives: ObjectiveSet, budget: int, worker: int = 0, progress: Callable[[int], None] | None = None,
             study=None, poll_s: float = 0.2) -> None:
        """Run trials in this process until the shared study holds `budget` complete trials, never more.

        Any number of processes may fill one study at once. A trial counts against the budget from
        its creation (RUNNING): one created when the trials numbered below it already claim the
        whole budget is failed (user attr `over_budget`) before it evaluates anything. While others'
        RUNNING trials could still complete the budget, this process waits for them. RUNNING trials
        that will never finish (a killed run's) are failed first, so they neither count nor block."""
        import optuna

        study = study or self.study(objectives, worker)
        objective = self.objective(objectives)
        while True:
            complete, running = self._tally(study)
            if complete >= budget:
                return
            if complete + running >= budget:  # others' trials may complete it, or fail: see which
                time.sleep(poll_s)
                continue
            trial = self._ask(study)
            if self._claimed_before(study, trial.number) >= budget:  # others claimed the last ones meanwhile
                trial.set_user_attr("over_budget", True)
                self._tell(study, trial.number, state=optuna.trial.TrialState.FAIL)
                continue
            self._evaluate(study, trial, objective, progress)

    @staticmethod
    def _ask(study):
        """A new trial of `study`, owned by this process."""
        trial = study.ask()
        trial.set_user_attr("owner", trial_owner())
        return trial

    def _evaluate(self, study, trial, objective, progress: Callable[[int], None] | None) -> None:
        """Evaluate `trial` and tell the study (FAIL, and the error raised here, if it raises)."""
        import optuna

        try:
            values = objective(trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # another process took it for dead and failed it
            return
        except BaseException:  # Ctrl-C included: the trial ends FAIL, not RUNNING
            self._tell(study, trial.number, state=optuna.trial.TrialState.FAIL)
            raise
        self._tell(study, trial.number, values)
        if progress:
            progress(1)

    @staticmethod
    def _tell(study, number: int, values=None, state=None) -> None:
        """Finish trial `number`, unless another process has finished it already (taking it for dead)."""
        import optuna

        try:
            study.tell(number, values, state=state, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:  # finished between the check and the update
            pass

    def _tally(self, study) -> tuple[int, int]:
        """(complete, running) trials of the study, after failing the RUNNING ones that will never finish."""
        import optuna

        states = optuna.trial.TrialState
        now, namespace = datetime.datetime.now(), _pid_namespace()
        trials = study.get_trials(deepcopy=False)
        stale = [t.number for t in trials if t.state == states.RUNNING and _is_stale(t, namespace, now)]
        for number in stale:
            self._tell(study, number, state=states.FAIL)
        if stale:
            trials = study.get_trials(deepcopy=False)
        return (sum(t.state == states.COMPLETE for t in trials), sum(t.state == states.RUNNING for t in trials))

    @staticmethod
    def _claimed_before(study, number: int) -> int:
        """Trials numbered below `number` that are complete or may yet complete."""
        import optuna

        claimed = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
        return sum(t.number < number for t in study.get_trials(deepcopy=False, states=claimed))

    def front_of(self, study, objectives: ObjectiveSet, front: ParetoFront, budget: int | None = None) -> ParetoFront:
        """`front` with the study's complete trials added, in order (the first `budget` of them)."""
        import optuna

        trials = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)
        for t in trials[:budget]:
            arch = self.space.from_params(t.params)
            extra = {k: v for k, v in t.user_attrs.items() if k.startswith("std:")} | {"trial": t.number}
            front.add([Candidate(arch, tuple(t.values), tuple(t.user_attrs.get("constraints", [])), extra)], record=False)
            if (t.number + 1) % max(1, self.population) == 0:
                front.history.append((len(front.candidates), front.hypervolume()))
        front.history.append((len(front.candidates), front.hypervolume()))
        return front

    def run(self, objectives: ObjectiveSet, budget: int, front: ParetoFront, progress=None) -> ParetoFront:
        """Run the study until it holds `budget` complete trials (resuming an existing one), in this
        process or in `workers` worker processes."""
        study = self.study(objectives)
        shown = min(self.complete_trials(study), budget)  # a resumed study's trials so far
        if progress:
            progress(shown)
        if self.workers > 1 and shown < budget:
            def poll() -> None:  # the workers' trials, on this process's progress bar
                nonlocal shown
                done = min(self.complete_trials(study), budget)
                progress(done - shown)
                shown = done

            wait_all([Isolated(_optuna_worker, *self.worker_args, i, self.storage_url) for i in range(self.workers)], grace=2,
                     poll=poll if progress else None)
        else:
            self.fill(objectives, budget, progress=progress, study=study)
        return self.front_of(study, objectives, front, budget)


def _optuna_worker(space_json: str, cfg_json: str, run_dir: str, seed: int, study_name: str, worker: int, storage: str) -> None:
    """One worker process of a shared study: rebuilds the objectives from the run and fills the study."""
    from hwnas.search_space import SearchSpaceConfig

    from .config import SearchConfig
    from .stage import load_objectives

    space = SearchSpace(SearchSpaceConfig.model_validate_json(space_json))
    cfg = SearchConfig.model_validate_json(cfg_json)
    objectives = load_objectives(space, cfg, Path(run_dir))
    OptunaEngine(space, cfg.algorithm, storage, study_name=study_name, population=cfg.population, seed=seed).fill(
        objectives, cfg.budget, worker=worker)
