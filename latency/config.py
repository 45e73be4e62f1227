"""The `latency:` section of an experiment config: workload, backends and measurement protocol."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from hwnas.core.config import (
    MAX_BATCH,
    MAX_BLOCK,
    MAX_INT4_BLOCK,
    MAX_SECONDS,
    MAX_THREADS,
    Section,
    Seed,
    field_error,
    power_of_two,
)

from .runtimes import BACKENDS

Device = Literal["cpu", "cuda"]
BackendName = Literal[BACKENDS]  # the registered backends (latency.backends)

# Bounds of the protocol's counts, each far beyond a useful measurement: timed runs of one
# measurement (10**6 runs of even 1 ms is 17 minutes, per piece), pieces timed together, passes
# and retakes of a window, and whole subnets timed (each takes seconds)
MAX_RUNS = 10**6
MAX_INTERLEAVE = 10**4
MAX_PASSES = 1000
MAX_RETAKES = 100
MAX_SUBNETS = 10**5


class LatencyConfig(Section):
    """How latency tables are measured and checked.

    Workload: `batch_size` sequences of `seq_len` tokens (default: the space's block size), prefill;
    with `decode` among `workloads`, also one new token per sequence over a cache of `decode_context`
    tokens (a generation step), in a table of its own.
    Protocol: `warmup` untimed runs, then timed runs until the median of all runs so far moves less
    than `tolerance` (relative) between two checks `check_every` runs apart, after at least
    `min_repeats` runs; at most `max_repeats` runs or `max_seconds` of timing per measurement.
    Table pieces are timed `interleave` at a time in rounds of a random order (each in the context
    of others, as inside a model); whole subnets in a tight loop. Each measurement is repeated in
    `passes` passes over a batch of pieces or subnets, spread over time, and the runs pooled.
    `statistic`: what the table states by default of a subnet's run times (its fidelity report's
    headline, the export's comparison): median, p90, p10 or min. Every measurement holds every
    statistic and the build fits a correction on each, so a search objective names its own
    (`latency@cpu/onnxruntime:p90`; none named: the median, what a user sees in a run of an ordinary
    process). The minimum is the run the machine disturbed least, the low-noise ranking statistic:
    on a shared 2-vCPU VM the median of a fixed 128x512x512 matmul drifted 670-782 us between
    one-second windows while each window's minimum stayed within 657-667 us, and on the same 100
    held-out subnets the table was 99% within 10% on the minimum against 60% (torch) and 67%
    (onnxruntime) on the median. A decoding step (0.05-1.5 ms on the quickstart space) is shorter
    still: there, 20 subnets timed again minutes later repeated their median within 10% for 75-90%
    (ONNX Runtime) and their minimum for 95-100%, so the decode fidelity bench states the minimum
    (`latency@cpu/onnxruntime:decode:min` ranks by it).
    `threads`: the fixed CPU thread count; null: the cores this process may use. The default, 1,
    times on the thread's CPU clock, which other processes on a shared machine do not inflate; with
    several threads, one descheduled thread stalls the others at every parallel op (on the 2-core
    build machine under load, a 2-thread subnet timed 15-50 ms that takes 2.5 ms on 1 thread).
    `clock`: wall time, or the CPU time of the (single) timing thread, which a busy machine does not
    inflate; `auto` picks the thread clock for 1 thread on CPU, else wall time.
    `speed_reference`: time one fixed subnet in every window of measurements (build and fidelity
    report) and scale each window of the table to the build's median speed of it, so a machine
    whose speed moves between windows does not move the table; the report states the drift since.
    A window in which the machine's speed moved more than `speed_tolerance` (the reference's
    per-pass minima spread, or its minimum is off the windows before) is measured again, up to
    `speed_retakes` times (waiting `speed_backoff_s` x the retake's number first), and the least
    disturbed attempt kept; a report whose kept windows still moved more says it was disturbed.
    On the shared 2-vCPU VM windows moved 0.4-7% in quiet times and 10-58% while a neighbour was
    busy; at a 3% tolerance the quickstart demo measured its 14 windows 31 times (latency stage
    647 s), where 5% would have needed about 22.
    `n_correction` whole subnets fit the correction model; `n_fidelity` further held-out subnets
    check the table (the fidelity report), which is logged to W&B in mode `wandb`; the first
    `n_user_view` of them are also timed as a user times them (`latency.userview`: each in a fresh
    process, a plain wall-clock loop), and the report scores the table on that too (`user_view`).
    """

    batch_size: int = Field(default=1, gt=0, le=MAX_BATCH, description="sequences per timed forward pass (the "
                            "workload: a prefill of batch_size x seq_len tokens)")
    seq_len: int | None = Field(default=None, gt=0, le=MAX_BLOCK, description="tokens per timed sequence; "
                                "default (and at most): the space's block_size")
    workloads: list[Literal["prefill", "decode"]] = Field(
        default_factory=lambda: ["prefill"], description="what each table times: prefill (a forward of batch_size x "
        "seq_len tokens, the table <device>-<runtime>.json) and/or decode (one new token per sequence over the cache of "
        "decode_context tokens, the table <device>-<runtime>-decode.json: the time of each generated token)")
    decode_context: int | None = Field(default=None, gt=0, le=MAX_BLOCK, description="tokens already in the cache when "
                                       "the decode workload times a step; default: half the space's block_size (at most "
                                       "block_size - 1 with learned positions; rope and none may go past it)")
    devices: list[Device] = Field(default_factory=lambda: ["cpu"], description="devices to build tables for (cpu, "
                                  "cuda); every latency@<device> the search names needs its device here")
    backends: list[BackendName] = Field(default_factory=lambda: list(BACKENDS), description="runtimes to build tables "
                                        "for: torch (eager PyTorch) and onnxruntime (the exported ONNX model, what "
                                        "the export deploys); each latency objective's runtime needs its table")
    threads: int | None = Field(default=1, gt=0, le=MAX_THREADS, description="fixed CPU thread count of every "
                                "measurement; null: the cores this process may use (1 is the steadiest on a shared "
                                "machine)")
    warmup: int = Field(default=10, ge=0, le=MAX_RUNS, description="untimed runs before each measurement")
    min_repeats: int = Field(default=20, gt=0, le=MAX_RUNS, description="timed runs before the median may be "
                             "called settled")
    max_repeats: int = Field(default=300, gt=0, le=MAX_RUNS, description="most timed runs of one measurement "
                             "(at least min_repeats)")
    max_seconds: float = Field(default=2.0, gt=0, le=MAX_SECONDS, description="most seconds of timing per "
                               "measurement, whatever the run count")
    check_every: int = Field(default=10, gt=0, le=MAX_RUNS, description="timed runs between two checks of whether "
                             "the median has settled")
    tolerance: float = Field(default=0.005, gt=0, lt=1, description="relative change of the median between two "
                             "checks below which a measurement stops (0.005: 0.5%)")
    interleave: int = Field(default=16, gt=0, le=MAX_INTERLEAVE, description="table pieces timed together, in "
                            "rounds of a random order, so each runs amid others as inside a model")
    passes: int = Field(default=3, gt=0, le=MAX_PASSES, description="passes over each batch of pieces or subnets, "
                        "spread over time, whose runs are pooled into one measurement")
    statistic: Literal["median", "p90", "p10", "min"] = Field(
        default="median", description="the table's headline statistic of the run times (fidelity report, export "
        "comparison); every statistic is kept, and a search objective may name its own (latency@cpu:p90)")
    clock: Literal["auto", "wall", "thread"] = Field(
        default="auto", description="wall time, or the timing thread's CPU time (needs threads: 1; a busy machine "
        "does not inflate it); auto: thread for 1 thread on CPU, else wall")
    speed_reference: bool = Field(default=True, description="time one fixed subnet in every window of measurements "
                                  "and scale each window to the build's median speed of it, so a machine whose "
                                  "speed drifts does not move the table")
    speed_tolerance: float = Field(default=0.05, gt=0, lt=1, description="relative change of the machine's speed "
                                   "in a window (the speed reference's spread there, or its shift from the windows "
                                   "before) above which the window is measured again; raise it on a noisy machine")
    speed_retakes: int = Field(default=3, ge=0, le=MAX_RETAKES, description="most re-measurements of a disturbed "
                               "window (the least disturbed attempt is kept)")
    speed_backoff_s: float = Field(default=10.0, ge=0, le=MAX_SECONDS, description="seconds to wait before a "
                                   "retake, times the retake's number")
    n_correction: int = Field(default=60, ge=0, le=MAX_SUBNETS, description="whole subnets (half stratified by size) "
                              "timed end to end to fit the correction on top of the table's sum of pieces")
    n_fidelity: int = Field(default=100, ge=0, le=MAX_SUBNETS, description="further held-out subnets timed end to "
                            "end to check the table (the fidelity report); 0: no report")
    n_user_view: int = Field(default=0, ge=0, le=MAX_SUBNETS, description="of the held-out subnets, how many the fidelity "
                             "report also times as a user does (each in a fresh process, a plain wall-clock loop; about 5 s "
                             "each on CPU), scoring the table on what users see")
    seed: Seed = Field(default=0, description="seed of the latency stage's own draws: the correction and held-out "
                       "subnets, the speed reference, the interleaving order and the input tokens")
    onnx_exporter: Literal["torchscript", "dynamo"] = Field(
        default="torchscript", description="torch.onnx exporter the onnxruntime backend uses: torchscript (opset 17) "
        "or dynamo")
    int4_block_size: int = Field(default=32, ge=16, le=MAX_INT4_BLOCK, description="weights per block of the "
                                 "onnxruntime backend's int4 MatMulNBits layers (a power of two)")
    wandb: Literal["offline", "online", "disabled"] = Field(default="offline", description="W&B mode of the "
                                                            "fidelity reports (offline: `wandb sync` later)")
    wandb_project: str = Field(default="hwnas", description="W&B project the fidelity reports are logged to")

    @field_validator("devices", "backends", "workloads")
    @classmethod
    def _distinct(cls, v: list) -> list:
        if not v:
            raise ValueError("needs at least one choice")
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates {v}")
        return v

    @field_validator("int4_block_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        return power_of_two(v)

    @model_validator(mode="after")
    def _repeats(self) -> LatencyConfig:
        if self.max_repeats < self.min_repeats:
            raise field_error("max_repeats", f"{self.max_repeats} is below min_repeats {self.min_repeats}")
        if self.clock == "thread" and self.threads not in (None, 1):
            raise field_error("clock", f"'thread' times one thread's CPU time; it needs threads: 1, not {self.threads}")
        return self

    def resolved_clock(self, device: str, threads: int) -> str:
        """The clock actually used: `auto` is the thread CPU clock for 1 thread on CPU, else wall."""
        if self.clock != "auto":
            return self.clock
        return "thread" if device == "cpu" and threads == 1 else "wall"
