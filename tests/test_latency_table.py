"""Latency tables without timing anything real: keys, predict(), the file format (hash, corrupt
files), fingerprints, resumable builds, the protocol's stopping rules, the fidelity metrics."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
import zlib

import numpy as np
import pytest

from hwnas.core.errors import HwnasError
from hwnas.core.manifest import Manifest
from hwnas.latency import (
    FingerprintMismatchError,
    FingerprintWarning,
    LatencyConfig,
    LatencyTable,
    Measurement,
    Measurer,
    Protocol,
    TableError,
    arch_keys,
    build_table,
    device_fingerprint,
    fidelity_report,
    heldout_archs,
    measure,
    space_pieces,
    table_path,
)
from hwnas.latency.fidelity import error_metrics
from hwnas.latency.protocol import measure_many
from hwnas.latency.speed import REFERENCE
from hwnas.latency.table import load_table
from hwnas.search_space import ArchConfig, LayerConfig, SearchSpace, SearchSpaceConfig
from tests.tiny import page_text, wandb_when

TINY = SearchSpaceConfig(
    vocab_size=32, block_size=16, head_dim=4, depth=[1, 2], embed_dim=[8, 16],
    n_heads={"choices": [1, 2]}, mlp_ratio={"choices": [2.0]}, norm={"choices": ["layernorm", "rmsnorm"]},
    norm_placement={"choices": ["pre", "peri"]}, attention={"choices": ["softmax", "window"], "windows": [4]},
    ffn={"choices": ["mlp", "moe"], "experts": [2], "top_k": [1]}, weight_bits={"choices": [16, 8]},
)


def fake_time(key: str) -> float:
    """A distinct, deterministic latency (seconds) per key."""
    return 1e-6 * (10 + zlib.crc32(key.encode()) % 1000)


class FakeMeasurer(Measurer):
    """Returns made-up times instantly and counts what it was asked to measure. `speeds`: the
    machine's slowness in successive windows (every time in the window multiplied by it, the
    speed reference's too), the last repeated."""

    def __init__(self, space, cfg, fail_after_windows: int | None = None, speeds: tuple[float, ...] = (1.0,)):
        from hwnas.latency.backends import TorchBackend

        super().__init__(space, TorchBackend("cpu", 1), Protocol.from_config(cfg), {"batch_size": 1, "seq_len": 16})
        self.pieces_measured: list[str] = []
        self.archs_measured: list[str] = []
        self.fail_after_windows = fail_after_windows
        self.speeds, self.windows = speeds, 0

    def slowness(self) -> float:
        self.windows += 1
        return self.speeds[min(self.windows, len(self.speeds)) - 1]

    @staticmethod
    def whole(arch) -> float:
        return sum(fake_time(k) for k in arch_keys(arch)) * 1.05 + 3e-6 * arch.depth

    @staticmethod
    def timed(t: float) -> Measurement:
        return Measurement(t, 1.1 * t, 20, True)

    def measure_pieces(self, pieces, interleave=16, reference=None):
        if self.fail_after_windows is not None and self.fail_after_windows <= 0:
            raise KeyboardInterrupt  # an interrupted build
        if self.fail_after_windows is not None:
            self.fail_after_windows -= 1
        self.pieces_measured += [p.key for p in pieces]
        slow = self.slowness()
        out = {p.key: self.timed(slow * fake_time(p.key)) for p in pieces}
        return out | ({REFERENCE: self.timed(slow * self.whole(reference))} if reference is not None else {})

    def measure_archs(self, archs, reference=None):
        self.archs_measured += [a.key() for a in archs]
        slow = self.slowness()
        named = {a.key(): a for a in archs} | ({REFERENCE: reference} if reference is not None else {})
        return {k: self.timed(slow * self.whole(a)) for k, a in named.items()}


@pytest.fixture
def tiny() -> SearchSpace:
    return SearchSpace(TINY)


@pytest.fixture
def cfg() -> LatencyConfig:
    return LatencyConfig(threads=1, n_correction=12, n_fidelity=10, interleave=5, wandb="disabled", speed_backoff_s=0)


def built(tiny, cfg, tmp_path) -> LatencyTable:
    return build_table(tiny, cfg, table_path(tmp_path, "cpu", "torch"), progress=False, measurer=FakeMeasurer(tiny, cfg))


HAND_ARCH = ArchConfig(embed_dim=16, layers=(
    LayerConfig(n_heads=2, mlp_ratio=2.0, norm="rmsnorm", placement="peri", attention="window", window=4, ffn="moe",
                n_experts=2, top_k=1, weight_bits=8),
    LayerConfig(n_heads=1, mlp_ratio=2.0, norm="layernorm", placement="peri", attention="softmax", ffn="mlp"),
))


# --- keys and predict -----------------------------------------------------------------------------
def test_arch_keys_of_a_hand_made_arch():
    assert arch_keys(HAND_ARCH) == [
        "call", "embed/d16",
        "norm/d16-rms-peri", "attn/d16-h2-win4-q8", "norm/d16-rms-peri", "ffn/d16-h32-moe2k1-q8",
        "norm/d16-ln-peri", "attn/d16-h1-sm-q16", "norm/d16-ln-peri", "ffn/d16-h32-mlp-q16",
        "head/d16-ln",
    ]


def test_predict_sums_exactly_the_arch_keys(tiny, cfg, tmp_path):
    table = built(tiny, cfg, tmp_path)
    call = fake_time("call")
    expected = call + sum(fake_time(k) - call for k in [
        "embed/d16", "norm/d16-rms-peri", "attn/d16-h2-win4-q8", "norm/d16-rms-peri", "ffn/d16-h32-moe2k1-q8",
        "norm/d16-ln-peri", "attn/d16-h1-sm-q16", "norm/d16-ln-peri", "ffn/d16-h32-mlp-q16", "head/d16-ln"])
    assert table.table_sum(HAND_ARCH) == pytest.approx(expected, rel=1e-12)
    assert [k for k, _ in table.breakdown(HAND_ARCH)] == arch_keys(HAND_ARCH)
    # the correction is applied on top of the sum, with the arch's features
    c = table.correction
    assert c is not None and c.features == ("table_sum", "depth", "moe_layers")
    want = c.intercept + c.coef[0] * expected + c.coef[1] * 2 + c.coef[2] * 1
    assert table.predict(HAND_ARCH) == pytest.approx(want, rel=1e-9)
    table.correction = None
    assert table.predict(HAND_ARCH) == pytest.approx(expected, rel=1e-12)


def test_predict_names_missing_keys(tiny, cfg, tmp_path):
    table = built(tiny, cfg, tmp_path)
    del table.entries["attn/d16-h2-win4-q8"]
    with pytest.raises(TableError, match="attn/d16-h2-win4-q8"):
        table.predict(HAND_ARCH)


def test_correction_learns_what_the_sum_misses(tiny, cfg, tmp_path):
    """FakeMeasurer's whole subnets take 1.05 x the raw sum + 3 us per layer: the corrected
    prediction recovers that on held-out archs, the plain sum does not."""
    table = built(tiny, cfg, tmp_path)
    m = FakeMeasurer(tiny, cfg)
    for arch in [tiny.sample(1000 + i) for i in range(20)]:
        truth = m.measure_arch(arch).median
        assert table.predict(arch) == pytest.approx(truth, rel=0.02)
    assert any(abs(table.table_sum(a) - m.measure_arch(a).median) / m.measure_arch(a).median > 0.03
               for a in [tiny.sample(i) for i in range(20)])


class KindsMeasurer(FakeMeasurer):
    """Whole subnets as FakeMeasurer's, plus 20 us per softmax layer (say, its growing cache)."""

    @staticmethod
    def whole(arch) -> float:
        return FakeMeasurer.whole(arch) + 20e-6 * sum(layer.attention == "softmax" for layer in arch.layers)


def test_correction_learns_a_cost_per_attention_kind(tiny, cfg, tmp_path):
    """With enough calibration subnets the correction may count layers per attention kind: it is
    chosen when the glue depends on the kind, and recovers it on held-out archs; too few subnets
    for its coefficients (3 per coefficient) and the simpler model is the only one fitted; too few for
    the linear one and the table is the plain sum."""
    cfg = cfg.model_copy(update={"n_correction": 30})
    table = build_table(tiny, cfg, table_path(tmp_path, "cpu", "torch"), progress=False, measurer=KindsMeasurer(tiny, cfg))
    assert table.meta["correction_choice"] == "kinds"
    assert table.correction.features == ("table_sum", "depth", "moe_layers", "softmax_layers", "linear_layers")
    m = KindsMeasurer(tiny, cfg)
    for arch in [tiny.sample(1000 + i) for i in range(20)]:
        assert table.predict(arch) == pytest.approx(m.measure_arch(arch).median, rel=0.01)
    few = build_table(tiny, cfg.model_copy(update={"n_correction": 14}), table_path(tmp_path / "few", "cpu", "torch"),
                      progress=False, measurer=KindsMeasurer(tiny, cfg))
    assert "kinds" not in few.meta["correction_loo_mape_pct"]
    fewer = build_table(tiny, cfg.model_copy(update={"n_correction": 8}), table_path(tmp_path / "fewer", "cpu", "torch"),
                        progress=False, measurer=KindsMeasurer(tiny, cfg))
    assert fewer.correction is None and "correction_choice" not in fewer.meta  # under 12: no model beyond the sum


class MistimedMeasurer(FakeMeasurer):
    """Whole subnets as FakeMeasurer's, but every MoE piece timed 1.5x too slow on its own (say,
    a piece that runs faster in a model than alone)."""

    def measure_pieces(self, pieces, interleave=16, reference=None):
        out = super().measure_pieces(pieces, interleave, reference)
        return {k: self.timed(1.5 * m.median) if "moe" in k and k.startswith("ffn/") else m for k, m in out.items()}


def test_pieces_timed_off_are_refined_by_the_whole_subnets(tiny, cfg, tmp_path, monkeypatch):
    """Pieces that the whole subnets show to be timed off are scaled by them (refine): the MoE
    pieces' factors go down, and held-out subnets are predicted with half the error of the same
    correction without refinement; a table whose pieces are right is not refined."""
    import hwnas.latency.refine as refine

    cfg = cfg.model_copy(update={"n_correction": 40})
    table = build_table(tiny, cfg, table_path(tmp_path, "cpu", "torch"), progress=False, measurer=MistimedMeasurer(tiny, cfg))
    assert table.meta["refine_lambda"] != "none"
    moe = [f for k, f in table.correction.piece_factors.items() if "moe" in k]
    assert moe and np.mean(moe) < 0.95  # scaled down (the correction's MoE term takes a share of the gap)
    again = LatencyTable.load(table_path(tmp_path, "cpu", "torch"))
    assert again.correction == table.correction  # the factors are in the file
    m, held = MistimedMeasurer(tiny, cfg), [tiny.sample(2000 + i) for i in range(30)]
    errors = np.array([table.predict(a) / m.measure_arch(a).median - 1 for a in held])
    monkeypatch.setattr(refine, "MIN_SUBNETS", 10**6)
    plain = dataclasses.replace(table)
    plain.fit_correction()
    assert "refine_lambda" not in plain.meta and not plain.correction.piece_factors
    unrefined = np.array([plain.predict(a) / m.measure_arch(a).median - 1 for a in held])
    assert np.abs(errors).mean() < 0.6 * np.abs(unrefined).mean() and np.abs(errors).max() < np.abs(unrefined).max()
    monkeypatch.undo()

    class Exact(FakeMeasurer):  # whole subnets exactly a linear function of the table sum and depth
        @staticmethod
        def whole(arch) -> float:
            return 1.05 * table_sum(arch) + 3e-6 * arch.depth

    table_sum = build_table(tiny, cfg, table_path(tmp_path / "exact", "cpu", "torch"), progress=False,
                                    measurer=FakeMeasurer(tiny, cfg)).table_sum
    right = build_table(tiny, cfg, table_path(tmp_path / "right", "cpu", "torch"), progress=False, measurer=Exact(tiny, cfg))
    assert right.meta["refine_lambda"] == "none" and not right.correction.piece_factors


def test_keys_grow_with_choices_not_with_subnets(quickstart_space):
    pieces = space_pieces(quickstart_space)
    keys = [p.key for p in pieces]
    assert len(keys) == len(set(keys)) == 202  # 1 call + 3 embed + 9 head + 27 norm + 54 attn + 108 ffn
    assert quickstart_space.size() > 10**12
    covered = set(keys)
    for seed in range(200):  # every key of any arch is in the table
        assert set(arch_keys(quickstart_space.sample(seed))) <= covered


# --- file format ----------------------------------------------------------------------------------
def test_round_trip(tiny, cfg, tmp_path):
    table = built(tiny, cfg, tmp_path)
    again = LatencyTable.load(table_path(tmp_path, "cpu", "torch"))
    assert again.entries == table.entries
    assert again.correction == table.correction
    assert again.predict(HAND_ARCH) == pytest.approx(table.predict(HAND_ARCH), rel=1e-12)


@pytest.mark.parametrize("positions", ["rope", "none"])
def test_a_table_keeps_the_positions_it_was_measured_with(cfg, tmp_path, positions):
    """A rotary (or position-free) space's table says so in its file: it loads for that space, and
    a learned-positions space refuses it (its attention and embedding pieces differ)."""
    space = SearchSpace(TINY.model_copy(update={"positions": positions}))
    build_table(space, cfg, table_path(tmp_path, "cpu", "torch"), progress=False, measurer=FakeMeasurer(space, cfg),
                manifest=Manifest.of(tmp_path, "latency"))
    assert load_table(tmp_path, "cpu", "torch", space=space).dims.positions == positions
    with pytest.raises(TableError, match="measured for model dims"):
        load_table(tmp_path, "cpu", "torch", space=SearchSpace(TINY))


def test_truncated_table_fails_clearly(tiny, cfg, tmp_path):
    path = table_path(tmp_path, "cpu", "torch")
    built(tiny, cfg, tmp_path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(TableError, match="truncated") as e:
        LatencyTable.load(path)
    assert isinstance(e.value, HwnasError)


def test_altered_table_fails_clearly(tiny, cfg, tmp_path):
    path = table_path(tmp_path, "cpu", "torch")
    built(tiny, cfg, tmp_path)
    doc = json.loads(path.read_text())
    doc["payload"]["entries"]["embed/d8"]["median_s"] *= 0.5  # someone "improves" a number
    path.write_text(json.dumps(doc))
    with pytest.raises(TableError, match="content hash mismatch"):
        LatencyTable.load(path)


@pytest.mark.parametrize("content, match", [
    ('{"format": "something-else", "payload": {}, "sha256": ""}', "not an hwnas latency table"),
    ("[1, 2, 3]", "not an hwnas latency table"),
    ("", "truncated"),
])
def test_foreign_or_empty_files_fail_clearly(tmp_path, content, match):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(TableError, match=match):
        LatencyTable.load(path)


def test_missing_table_fails_clearly(tmp_path):
    with pytest.raises(TableError, match="not found"):
        LatencyTable.load(tmp_path / "nope.json")


def test_malformed_payload_with_valid_hash_fails_clearly(tmp_path):
    from hwnas.latency.table import FORMAT, content_hash

    payload = {"device": "cpu"}
    (tmp_path / "t.json").write_text(json.dumps({"format": FORMAT, "sha256": content_hash(payload), "payload": payload}))
    with pytest.raises(TableError, match="malformed"):
        LatencyTable.load(tmp_path / "t.json")


# --- fingerprints ---------------------------------------------------------------------------------
def _with_fingerprint(table: LatencyTable, path, **changes) -> None:
    table.fingerprint = {**table.fingerprint, **changes}
    table.save(path)


def test_same_device_loads_silently(tiny, cfg, tmp_path):
    built(tiny, cfg, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatencyTable.load(table_path(tmp_path, "cpu", "torch"), strict=True)


def test_fingerprint_mismatch_warns_or_raises_when_strict(tiny, cfg, tmp_path):
    path = table_path(tmp_path, "cpu", "torch")
    _with_fingerprint(built(tiny, cfg, tmp_path), path, cpu="Some Other CPU 9000", torch="1.0.0")
    with pytest.warns(FingerprintWarning, match="Some Other CPU 9000") as rec:
        table = LatencyTable.load(path)
    assert "torch" in str(rec[0].message)
    assert table.entries  # still usable
    with pytest.raises(FingerprintMismatchError, match="Some Other CPU 9000") as e:
        LatencyTable.load(path, strict=True)
    assert isinstance(e.value, HwnasError)


def test_fingerprint_ignores_fields_that_do_not_matter(tiny, cfg, tmp_path):
    """A torch-backend CPU table does not depend on the onnxruntime version."""
    path = table_path(tmp_path, "cpu", "torch")
    _with_fingerprint(built(tiny, cfg, tmp_path), path, onnxruntime="0.0.1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatencyTable.load(path, strict=True)


def test_fingerprint_records_the_device():
    fp = device_fingerprint("cpu", 2)
    assert fp["threads"] == 2 and fp["device"] == "cpu" and fp["torch"] and fp["cpu"]
    assert {"gpu", "gpu_driver", "onnxruntime", "triton", "dtype", "cores", "gpu_clocks"} <= set(fp)


def test_gpu_clock_notes_come_from_nvidia_smi_and_are_empty_without_it(monkeypatch):
    import subprocess

    import hwnas.latency.fingerprint as fpm

    seen = []

    def smi(cmd, **kw):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "580.159.04, 1980 MHz, 1980 MHz, 3201 MHz, 700.00 W, Enabled, 0x0000000000000000\n", "")

    monkeypatch.setattr(fpm.subprocess, "run", smi)
    assert fpm.gpu_query(1) == {"driver_version": "580.159.04", "clocks.sm": "1980 MHz", "clocks.max.sm": "1980 MHz",
                                "clocks.mem": "3201 MHz", "power.limit": "700.00 W", "persistence_mode": "Enabled",
                                "clocks_throttle_reasons.active": "0x0000000000000000"}
    assert seen[0][:2] == ["nvidia-smi", "--id=1"]
    monkeypatch.setattr(fpm.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "1, 2\n", ""))
    assert fpm.gpu_query() == {}  # an answer of another shape: no notes rather than wrong ones

    def missing(cmd, **kw):
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(fpm.subprocess, "run", missing)
    assert fpm.gpu_query() == {}
    assert fpm.device_fingerprint("cpu", 1)["gpu_clocks"] is None
    # the notes never decide whether a table fits this machine
    assert all("gpu_clocks" not in fields for fields in fpm._RELEVANT.values())


# --- resumable build ------------------------------------------------------------------------------
def test_interrupted_build_resumes_with_measured_keys(tiny, cfg, tmp_path, monkeypatch):
    import hwnas.latency.build as build

    monkeypatch.setattr(build, "SAVE_EVERY_S", 0.0)  # save after every window
    monkeypatch.setattr(build, "WINDOW_GROUPS", 1)  # a window per group: the tiny space has a few
    path = table_path(tmp_path, "cpu", "torch")
    first = FakeMeasurer(tiny, cfg, fail_after_windows=1)
    with pytest.raises(KeyboardInterrupt):
        build_table(tiny, cfg, path, progress=False, measurer=first)
    partial = LatencyTable.load(path)
    assert set(partial.entries) == set(first.pieces_measured)
    assert 0 < len(first.pieces_measured) < len(space_pieces(tiny))  # one window of groups was done
    assert not partial.meta["complete"]

    second = FakeMeasurer(tiny, cfg)
    table = build_table(tiny, cfg, path, progress=False, measurer=second)
    all_keys = {p.key for p in space_pieces(tiny)}
    assert set(second.pieces_measured) == all_keys - set(first.pieces_measured)  # only the missing ones
    assert len(second.pieces_measured) == len(set(second.pieces_measured))
    assert set(table.entries) == all_keys and table.meta["complete"]
    assert len(second.archs_measured) == cfg.n_correction

    third = FakeMeasurer(tiny, cfg)  # a finished table: nothing left to measure
    build_table(tiny, cfg, path, progress=False, measurer=third)
    assert third.pieces_measured == [] and third.archs_measured == []


def test_build_does_not_reuse_a_table_from_another_device(tiny, cfg, tmp_path):
    path = table_path(tmp_path, "cpu", "torch")
    _with_fingerprint(built(tiny, cfg, tmp_path), path, cpu="Some Other CPU 9000")
    with pytest.raises(FingerprintMismatchError):
        build_table(tiny, cfg, path, strict=True, progress=False, measurer=FakeMeasurer(tiny, cfg))
    m = FakeMeasurer(tiny, cfg)
    with pytest.warns(UserWarning, match="re-measuring"):
        build_table(tiny, cfg, path, progress=False, measurer=m)
    assert len(m.pieces_measured) == len(space_pieces(tiny))
    assert path.with_suffix(".stale.json").exists()


def test_build_refuses_to_overwrite_a_corrupt_table(tiny, cfg, tmp_path):
    path = table_path(tmp_path, "cpu", "torch")
    path.parent.mkdir(parents=True)
    path.write_text('{"format": "hwnas-latency-table-1", "payl')
    with pytest.raises(TableError, match="truncated"):
        build_table(tiny, cfg, path, progress=False, measurer=FakeMeasurer(tiny, cfg))


# --- protocol -------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self, step: float = 1e-3):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_protocol_stops_when_the_median_is_stable():
    p = Protocol(warmup=2, min_repeats=20, max_repeats=500, max_seconds=1e9, check_every=10, tolerance=0.01)
    m = measure(lambda: None, p, timer=lambda fn: 1e-3)
    assert m.stable and m.n == 30 and m.median == pytest.approx(1e-3)  # first check at 20, confirmed at 30


def test_protocol_stops_at_the_repeat_cap():
    rng = np.random.default_rng(0)
    p = Protocol(warmup=0, min_repeats=10, max_repeats=57, max_seconds=1e9, check_every=10, tolerance=1e-9)
    m = measure(lambda: None, p, timer=lambda fn: float(rng.uniform(1e-3, 1e-2)))
    assert not m.stable and m.n == 57


def test_protocol_stops_at_the_time_cap():
    rng = np.random.default_rng(0)
    clock = FakeClock(step=0.125)
    p = Protocol(warmup=0, min_repeats=10, max_repeats=10**6, max_seconds=5.0, check_every=10, tolerance=1e-9)
    m = measure(lambda: None, p, timer=lambda fn: float(rng.uniform(1e-3, 1e-2)), clock=clock)
    assert not m.stable and m.n == 40  # one clock tick of 1/8 s per run: 5 s after 40 runs


def test_protocol_reports_median_and_p90():
    values = iter([float(v) for v in range(1, 101)])
    p = Protocol(warmup=0, min_repeats=100, max_repeats=100, max_seconds=1e9, check_every=1000, tolerance=0.01)
    m = measure(lambda: None, p, timer=lambda fn: next(values))
    assert m.n == 100 and m.median == 50.5 and m.p90 == pytest.approx(90.1)


def test_interleaved_protocol_runs_every_function_each_round_and_caps():
    calls = {"a": 0, "b": 0}

    def make(k):
        def fn():
            calls[k] += 1
        return fn

    rng = np.random.default_rng(1)
    noisy = {"a": lambda fn: (fn(), 1e-3)[1], "b": lambda fn: (fn(), float(rng.uniform(1, 2)))[1]}
    order = []

    def timer(fn):
        k = "a" if fn is fns["a"] else "b"
        order.append(k)
        return noisy[k](fn)

    fns = {"a": make("a"), "b": make("b")}
    p = Protocol(warmup=1, min_repeats=10, max_repeats=40, max_seconds=1e9, check_every=10, tolerance=1e-6)
    out = measure_many(fns, p, timer=timer, rng=0)
    assert out["a"].stable and out["a"].n == 20  # stable early; keeps running as context, no more samples
    assert not out["b"].stable and out["b"].n == 40
    assert calls == {"a": 41, "b": 41}
    assert len({tuple(order[i:i + 2]) for i in range(2, len(order), 2)}) == 2  # the order changes between rounds


# --- config ---------------------------------------------------------------------------------------
def test_latency_config_rejects_unknown_keys_and_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown key"):
        LatencyConfig.model_validate({"treads": 2})
    with pytest.raises(ValidationError, match="below min_repeats"):
        LatencyConfig(min_repeats=50, max_repeats=10)
    with pytest.raises(ValidationError):
        LatencyConfig(backends=["tensorrt"])
    assert LatencyConfig().n_fidelity >= 100


def test_seq_len_longer_than_the_block_is_an_error(tiny):
    from hwnas.latency.session import workload

    with pytest.raises(HwnasError, match="block_size"):
        workload(tiny, LatencyConfig(seq_len=64))
    assert workload(tiny, LatencyConfig()) == {"batch_size": 1, "seq_len": 16}


# --- fidelity -------------------------------------------------------------------------------------
def test_error_metrics_on_known_numbers():
    measured = np.array([1.0, 2.0, 3.0, 4.0])
    predicted = np.array([1.04, 2.16, 3.0, 2.0])  # errors 4%, 8%, 0%, 50%
    m = error_metrics(predicted, measured)
    assert m["within_5pct"] == 0.5 and m["within_10pct"] == 0.75
    assert m["mape_pct"] == pytest.approx(100 * (0.04 + 0.08 + 0 + 0.5) / 4)
    assert m["max_ape_pct"] == pytest.approx(50)
    assert m["rmse_ms"] == pytest.approx(math.sqrt((0.04**2 + 0.16**2 + 0 + 2**2) / 4))
    assert m["kendall_tau"] == pytest.approx((4 - 2) / 6)  # pairs (2,4) and (3,4) are swapped


def test_fidelity_report_writes_its_files(tiny, cfg, tmp_path):
    table = built(tiny, cfg, tmp_path)
    m = FakeMeasurer(tiny, cfg)
    report = fidelity_report(tiny, cfg, table, tmp_path, progress=False, wandb=False, measurer=m, retest_n=3)
    assert report["n"] == cfg.n_fidelity == len(m.archs_measured) - 3  # and 3 measured again
    assert report["retest"]["n"] == 3 and report["retest"]["mape_pct"] == 0  # FakeMeasurer repeats exactly
    assert not set(m.archs_measured) & set(table.calibration)  # held out from the correction's subnets
    assert report["prediction"]["within_10pct"] == 1.0 and report["prediction"]["kendall_tau"] > 0.9
    for ext in ("json", "md", "png", "html"):
        assert (tmp_path / "latency" / f"fidelity-cpu-torch.{ext}").stat().st_size > 100
    assert json.loads((tmp_path / "latency" / "fidelity-cpu-torch.json").read_text())["n"] == cfg.n_fidelity
    # a second report reuses the held-out measurements already taken
    again = FakeMeasurer(tiny, cfg)
    fidelity_report(tiny, cfg, table, tmp_path, progress=False, wandb=False, measurer=again, retest_n=0)
    assert again.archs_measured == []


def test_fidelity_report_logs_to_wandb_offline(tiny, cfg, tmp_path):
    from hwnas.core.plotting import remote_resources

    table = built(tiny, cfg, tmp_path)
    report = fidelity_report(tiny, cfg, table, tmp_path, n=6, progress=False, wandb="offline",
                             measurer=FakeMeasurer(tiny, cfg))
    history = wandb_when(tmp_path, lambda h: any("latency/heldout/nrows" in row for row in h))
    logged = {k: v for row in history for k, v in row.items()}
    assert logged["latency/within_10pct"] == report["prediction"]["within_10pct"]
    assert logged["latency/flops_kendall_tau"] == report["proxies"]["flops_kendall_tau"]
    assert logged["latency/heldout/nrows"] == 6 and logged["latency/predicted_vs_measured/_type"] == "image-file"
    assert (tmp_path / "fidelity-cpu-torch.jsonl").exists()
    page = page_text(tmp_path / "latency/fidelity-cpu-torch.html")
    assert remote_resources(page) == []  # plotly.js inlined: the page opens offline (it loaded it from a CDN)
    assert "measured on " in page and "thread" in page and "predicted latency (ms)" in page  # the machine, the unit


def test_remote_resources_finds_what_a_page_would_fetch():
    from hwnas.core.plotting import remote_resources

    page = ('<script src="https://cdn.plot.ly/plotly-2.35.2.min.js"></script><link rel="stylesheet" href=//x.org/a.css>'
            '<script>var topojson = "https://cdn.plot.ly/un/";</script><img src="data:image/png;base64,AAAA">')
    assert remote_resources(page) == ["https://cdn.plot.ly/plotly-2.35.2.min.js", "//x.org/a.css"]


def test_thread_clock_does_not_count_time_given_away():
    """The thread CPU clock counts work, not time spent off the CPU (here: asleep, as when the OS
    runs another process); the wall clock counts both."""
    import time

    from hwnas.latency.backends import TorchBackend

    p = Protocol(warmup=0, min_repeats=3, max_repeats=3, check_every=1)
    backend = TorchBackend("cpu", threads=1)
    nap = lambda: time.sleep(0.005)  # noqa: E731
    assert measure(nap, p, backend.timer("wall")).median >= 0.005
    assert measure(nap, p, backend.timer("thread")).median < 0.001
    with pytest.raises(HwnasError, match="1 thread"):
        TorchBackend("cpu", threads=2).timer("thread")


def test_clock_choice():
    assert LatencyConfig().resolved_clock("cpu", 1) == "thread"
    assert LatencyConfig().resolved_clock("cpu", 2) == "wall"
    assert LatencyConfig().resolved_clock("cuda", 1) == "wall"
    assert LatencyConfig(clock="wall").resolved_clock("cpu", 1) == "wall"
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="threads: 1"):
        LatencyConfig(clock="thread", threads=2)


def test_pieces_are_timed_among_pieces_of_their_width(quickstart_space):
    from hwnas.latency.session import interleave_groups

    pieces = space_pieces(quickstart_space)
    groups = interleave_groups(pieces, 16, seed=0)
    assert sorted(p.key for g in groups for p in g) == sorted(p.key for p in pieces)  # each exactly once
    assert all(len(g) <= 16 for g in groups)
    for g in groups:
        assert len({p.d for p in g if p.d is not None}) == 1
        assert len({p.kind for p in g}) > 1 or len(g) < 4  # a mix of kinds


def test_passes_are_pooled_and_spread_over_the_batch():
    """Each module is timed in every pass; a pass over the batch sits between two passes of one
    module, and the runs of all passes are pooled."""
    import torch

    from hwnas.latency.backends import TorchBackend

    calls = []

    class Tick(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append(self.name)
            return x

    p = Protocol(warmup=0, min_repeats=4, max_repeats=4, check_every=4, passes=3)
    x = torch.zeros(1)
    out = TorchBackend("cpu", 1).measure_each({"a": (Tick("a"), (x,)), "b": (Tick("b"), (x,))}, p)
    assert out["a"].n == out["b"].n == 12 and calls.count("a") == 12
    first, last = calls.index("a"), len(calls) - 1 - calls[::-1].index("a")
    assert "b" in calls[first:last]  # a's passes are not back to back
    calls.clear()
    groups = [{"a": (Tick("a"), (x,)), "b": (Tick("b"), (x,))}, {"c": (Tick("c"), (x,))}]
    out = TorchBackend("cpu", 1).measure_groups(groups, p)
    assert {k: m.n for k, m in out.items()} == {"a": 12, "b": 12, "c": 12}


def test_measurement_statistics_round_trip():
    m = Measurement.of([float(v) for v in range(1, 101)], stable=True)
    assert (m.median, m.min) == (50.5, 1.0) and m.p10 == pytest.approx(10.9) and m.p90 == pytest.approx(90.1)
    assert Measurement.from_dict(m.to_dict()) == m
    assert [m.value(s) for s in ("median", "p90", "p10", "min")] == [m.median, m.p90, m.p10, m.min]
    old = Measurement(2.0, 3.0, 5, True)  # a measurement recorded without p10 / min
    assert Measurement.from_dict(old.to_dict()) == old and old.value("min") == 2.0
    with pytest.raises(ValueError, match="statistic"):
        m.value("mean")


def test_table_predicts_its_statistic(tiny, cfg, tmp_path):
    table = built(tiny, cfg, tmp_path)
    for key, m in list(table.entries.items()):
        table.entries[key] = Measurement(m.median, m.p90, m.n, m.stable, p10=0.8 * m.median, min=0.5 * m.median)
    table.correction, table.statistic = None, "median"
    median = table.table_sum(HAND_ARCH)
    table.statistic = "min"
    assert table.table_sum(HAND_ARCH) == pytest.approx(0.5 * median)
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json").statistic == "min"


class DisturbedMedians(FakeMeasurer):
    """Exact minima; medians inflated by a different, arch-specific share of the runs (a busy machine)."""

    @staticmethod
    def disturb(key: str, m: Measurement) -> Measurement:
        noise = 1.0 + 0.4 * (zlib.crc32(key.encode()) % 97) / 97
        return Measurement(m.median * noise, m.p90 * noise, m.n, m.stable, p10=m.median * (1 + (noise - 1) / 2), min=m.median)

    def measure_pieces(self, pieces, interleave=16, reference=None):
        return {k: self.disturb(k, m) for k, m in super().measure_pieces(pieces, interleave, reference).items()}

    def measure_archs(self, archs, reference=None):
        return {k: self.disturb(k, m) for k, m in super().measure_archs(archs, reference).items()}


def test_fidelity_report_scores_every_statistic(tiny, cfg, tmp_path):
    cfg = cfg.model_copy(update={"statistic": "min"})
    table = build_table(tiny, cfg, table_path(tmp_path, "cpu", "torch"), progress=False, measurer=DisturbedMedians(tiny, cfg))
    assert table.statistic == "min"
    report = fidelity_report(tiny, cfg, table, tmp_path, progress=False, wandb=False, measurer=DisturbedMedians(tiny, cfg),
                             retest_n=4)
    by = report["by_statistic"]
    assert set(by) == {"median", "p90", "p10", "min"}
    assert by["min"]["prediction"] == report["prediction"] and by["min"]["retest"] == report["retest"]
    assert by["min"]["prediction"]["within_10pct"] == 1.0  # the undisturbed runs follow the table
    assert by["median"]["prediction"]["mape_pct"] > 2 * by["min"]["prediction"]["mape_pct"]
    assert by["median"]["retest"]["n"] == 4
    median_table = dataclasses.replace(table, statistic="median")
    median_table.fit_correction()
    rows = report["rows"]
    expected = error_metrics(np.array([median_table.predict_ms(ArchConfig.from_dict(r["arch_config"])) for r in rows]),
                             np.array([r["measured_median_ms"] for r in rows]))
    assert by["median"]["prediction"] == pytest.approx(expected)
    # the rows carry the table's statistic (the undisturbed minimum), the disturbed median beside it
    assert all(r["measured_ms"] <= r["measured_median_ms"] for r in rows)
    assert any(r["measured_ms"] < r["measured_median_ms"] for r in rows)
    # every statistic's prediction and measurement per row: what the search's error for each reads
    assert all(r["predicted_median_ms"] == pytest.approx(median_table.predict_ms(ArchConfig.from_dict(r["arch_config"])))
               and r["predicted_min_ms"] == r["predicted_ms"] and r["measured_min_ms"] == r["measured_ms"] for r in rows)
    md = (tmp_path / "latency" / "fidelity-cpu-torch.md").read_text()
    assert "| min (the table's) | " in md and "| median | " in md


def test_median_is_the_default_statistic():
    assert LatencyConfig().statistic == "median"
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="statistic"):
        LatencyConfig(statistic="mean")


def test_table_predicts_each_statistic_with_its_own_correction(tiny, cfg, tmp_path):
    """The build fits a correction on every statistic; `for_statistic` predicts it, from the file
    too, and a table written before (one correction) fits the others when asked."""
    cfg = cfg.model_copy(update={"n_correction": 16})
    table = build_table(tiny, cfg, table_path(tmp_path, "cpu", "torch"), progress=False, measurer=DisturbedMedians(tiny, cfg))
    assert set(table.corrections) == {"p90", "p10", "min"} and table.statistic == "median"  # the median's is `correction`
    archs = heldout_archs(tiny, 6, seed=5)
    for stat in ("p90", "min"):
        expected = dataclasses.replace(table, statistic=stat)
        expected.fit_correction()
        got = table.for_statistic(stat)
        assert got.statistic == stat and table.statistic == "median"  # a copy; the table itself is untouched
        assert [got.predict(a) for a in archs] == pytest.approx([expected.predict(a) for a in archs])
    assert table.for_statistic("median") is table
    assert all(table.for_statistic("p90").predict(a) > table.for_statistic("min").predict(a) for a in archs)
    loaded = LatencyTable.load(table_path(tmp_path, "cpu", "torch"))
    assert loaded.corrections == table.corrections
    assert [loaded.for_statistic("p90").predict(a) for a in archs] == [table.for_statistic("p90").predict(a) for a in archs]
    older = dataclasses.replace(loaded, corrections={})  # a table of the earlier format: fitted on load
    assert [older.for_statistic("p90").predict(a) for a in archs] == pytest.approx([table.for_statistic("p90").predict(a) for a in archs])
    with pytest.raises(TableError, match="statistic 'mean' is not one of median, p90, p10, min"):
        table.for_statistic("mean")


@pytest.mark.parametrize("n, most, sizes", [(100, 40, [34, 33, 33]), (60, 40, [30, 30]), (5, 40, [5]), (0, 4, []),
                                            (12, 10, [6, 6]), (8, 4, [4, 4])])
def test_windows_are_as_few_and_as_even_as_fit(n, most, sizes):
    from hwnas.latency.session import windows

    out = windows(list(range(n)), most)
    assert [len(w) for w in out] == sizes and [x for w in out for x in w] == list(range(n))


# --- the speed reference ------------------------------------------------------------------------
SPEEDS = (1.0, 1.4, 0.9, 1.2, 1.1, 0.95, 1.3, 1.0, 1.15, 0.85)  # the machine's slowness, window by window


def test_speed_reference_puts_every_window_at_the_build_speed(tiny, cfg, tmp_path, monkeypatch):
    """Windows timed at different speeds of the machine: scaled by the reference timed in each, the
    table equals a steady machine's table at the build's median speed, exactly; unscaled, its
    pieces mix speeds and its predictions are off by up to the spread."""
    import hwnas.latency.build as build

    monkeypatch.setattr(build, "WINDOW_GROUPS", 1)  # a window per piece group: several windows
    steady = built(tiny, cfg, tmp_path / "steady")
    cfg = cfg.model_copy(update={"speed_retakes": 0})  # every window kept as it came
    drifting = FakeMeasurer(tiny, cfg, speeds=SPEEDS)
    table = build_table(tiny, cfg, table_path(tmp_path / "scaled", "cpu", "torch"), progress=False, measurer=drifting)
    n_windows = drifting.windows
    assert n_windows >= 4 and len(table.speed_windows) == n_windows and table.reference is not None
    level = float(np.median([SPEEDS[min(i, len(SPEEDS) - 1)] for i in range(n_windows)]))
    archs = [tiny.sample(2000 + i) for i in range(30)]
    for arch in archs:
        assert table.table_sum(arch) == pytest.approx(level * steady.table_sum(arch), rel=1e-9)
        assert table.predict(arch) == pytest.approx(level * steady.predict(arch), rel=1e-6)
    unscaled = build_table(tiny, cfg.model_copy(update={"speed_reference": False}),
                           table_path(tmp_path / "unscaled", "cpu", "torch"), progress=False,
                           measurer=FakeMeasurer(tiny, cfg, speeds=SPEEDS))
    assert unscaled.reference is None and not unscaled.speed_windows
    ratios = np.array([unscaled.table_sum(a) / steady.table_sum(a) for a in archs])
    assert np.max(np.abs(ratios / level - 1)) > 0.05  # (the call cost, netted out of every piece, is one window's)


def test_a_disturbed_window_is_measured_again(tiny, cfg, tmp_path, monkeypatch):
    """A window whose reference ran off the speed of the windows before is retaken; the steady
    attempt is kept, so the table equals a steady machine's; every attempt's disturbance is kept."""
    import hwnas.latency.build as build

    monkeypatch.setattr(build, "WINDOW_GROUPS", 1)
    steady = built(tiny, cfg, tmp_path / "steady")
    waits = []
    monkeypatch.setattr(build.time, "sleep", waits.append)
    measurer = FakeMeasurer(tiny, cfg, speeds=(1.0, 1.0, 1.3, 1.02, 1.0))
    cfg = cfg.model_copy(update={"speed_backoff_s": 7.0})
    table = build_table(tiny, cfg, table_path(tmp_path, "cpu", "torch"), progress=False, measurer=measurer)
    assert waits[:4] == [0.0, 0.0, 0.0, 7.0]  # the retake of the third window waited first
    assert [w.disturbance for w in table.speed_windows][:3] == [(0.0,), (0.0,), pytest.approx((0.3, 0.02))]
    assert all(w.disturbance == (0.0,) for w in table.speed_windows[3:]) and measurer.windows == len(table.speed_windows) + 1
    for arch in [tiny.sample(3000 + i) for i in range(10)]:
        assert table.predict(arch) == pytest.approx(steady.predict(arch), rel=1e-6)
    assert LatencyTable.load(table_path(tmp_path, "cpu", "torch")).speed_windows == table.speed_windows


class UnevenPasses(FakeMeasurer):
    """The reference's passes ran at different speeds in the first `uneven` windows."""

    def __init__(self, *args, uneven: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.uneven = uneven

    def measure_archs(self, archs, reference=None):
        out = super().measure_archs(archs, reference)
        if reference is not None:
            m = out[REFERENCE]
            spread = (m.median, 1.1 * m.median, m.median) if self.windows <= self.uneven else (m.median,) * 3
            out[REFERENCE] = dataclasses.replace(m, min=m.median, pass_min=spread)
        return out


def test_a_window_whose_passes_ran_at_different_speeds_is_measured_again(tiny, cfg, tmp_path):
    table = built(tiny, cfg, tmp_path)
    cfg = cfg.model_copy(update={"speed_tolerance": 0.05, "speed_retakes": 2})
    for uneven, attempts in ((1, 2), (5, 3)):  # steady on the retake; never steady: the cap, the first kept
        measurer = UnevenPasses(tiny, cfg, uneven=uneven)
        report = fidelity_report(tiny, cfg, table, tmp_path / str(uneven), progress=False, wandb=False, measurer=measurer,
                                 retest_n=0)
        assert [len(d) for d in report["speed"]["report_disturbance"]] == [attempts]
        assert report["speed"]["report_disturbance"][0][0] == pytest.approx(0.1)
        assert measurer.windows == attempts
        md = (tmp_path / str(uneven) / "latency" / "fidelity-cpu-torch.md").read_text()
        assert "1 of 1 in this report" in md
        still = uneven >= attempts  # every attempt moved 10%: the report says it was measured on a busy machine
        assert report["speed"]["still_disturbed"] == {"build": 0, "report": int(still)} and ("**Disturbed**" in md) == still
        assert report["speed"]["retaken"] == {"build": 0, "report": 1}


def test_fidelity_report_states_the_drift_since_the_build(tiny, cfg, tmp_path):
    table = built(tiny, cfg, tmp_path)
    cfg = cfg.model_copy(update={"speed_retakes": 0})
    report = fidelity_report(tiny, cfg, table, tmp_path, progress=False, wandb=False,
                             measurer=FakeMeasurer(tiny, cfg, speeds=(1.1,)), retest_n=0)
    speed = report["speed"]
    assert speed["reference"] == table.reference.key() and speed["drift_pct"] == pytest.approx(10.0)
    assert report["prediction"]["mape_pct"] > 5  # everything ran 10% slower than the table says
    assert speed["at_table_speed"]["within_5pct"] == 1.0  # at the build's speed, the prediction holds
    assert speed["at_table_speed"]["mape_pct"] < 1 and table.reference.key() not in {r["arch"] for r in report["rows"]}
    assert "10.0% slower than at the build" in (tmp_path / "latency" / "fidelity-cpu-torch.md").read_text()


def test_the_retest_is_retaken_while_the_machine_moved(tiny, cfg, tmp_path):
    """The retest (the repeatability ceiling) is guarded like the held-out windows: a retest window
    in which the reference ran 30% slow is measured again, and the steady retake is what is scored."""
    table = built(tiny, cfg, tmp_path)
    cfg = cfg.model_copy(update={"speed_tolerance": 0.05, "speed_retakes": 2})
    measurer = FakeMeasurer(tiny, cfg, speeds=(1.0, 1.3, 1.0))  # held-out window, retest, its retake
    report = fidelity_report(tiny, cfg, table, tmp_path, progress=False, wandb=False, measurer=measurer, retest_n=3)
    assert measurer.windows == 3 and report["retest"]["n"] == 3 and report["retest"]["mape_pct"] < 1e-9
    assert [len(d) for d in report["speed"]["report_disturbance"]] == [1, 2]
    assert report["speed"]["report_disturbance"][1][0] == pytest.approx(0.3)
    assert report["speed"]["retaken"] == {"build": 0, "report": 1}


def test_a_table_anchored_to_the_speed_now_scales_its_predictions(tiny, cfg, tmp_path, monkeypatch):
    """`anchored`: the reference timed now, 10% slower than at the build, scales every prediction
    (each statistic's) by 1.1; the file keeps the build's speed; a table without a reference refuses."""
    import hwnas.latency.session as session
    from hwnas.latency.session import TableTiming

    monkeypatch.setattr(session, "SPEED_NOW_WARM_S", 0.2)  # seconds, not the 3 + 4 of a real anchoring
    monkeypatch.setattr(session, "SPEED_NOW_GAP_S", 0.05)
    table = build_table(tiny, cfg, table_path(tmp_path, "cpu", "torch"), progress=False, measurer=FakeMeasurer(tiny, cfg),
                        manifest=Manifest.of(tmp_path, "latency"))
    now = table.anchored(FakeMeasurer.timed(1.1 * FakeMeasurer.whole(table.reference)))
    assert now.speed_scale() == pytest.approx(1.1) and table.speed_scale() == 1.0
    archs = [tiny.sample(3000 + i) for i in range(10)]
    for stat in ("median", "p90"):
        for a in archs:
            assert now.for_statistic(stat).predict(a) == pytest.approx(1.1 * table.for_statistic(stat).predict(a), rel=1e-12)
    assert "speed_now" not in json.dumps(now.payload())
    bare = build_table(tiny, cfg.model_copy(update={"speed_reference": False}), table_path(tmp_path / "bare", "cpu", "torch"),
                       progress=False, measurer=FakeMeasurer(tiny, cfg), manifest=Manifest.of(tmp_path / "bare", "latency"))
    with pytest.raises(TableError, match="without a speed reference"):
        bare.anchored(FakeMeasurer.timed(1e-3))
    # where the table is used: the reference timed here for real, the prediction anchored to it
    timing = TableTiming(tmp_path, "cpu", "torch", block_size=16, threads=1, max_seconds=0.2)
    assert timing.predict_ms(archs[0], now=True) is None  # not anchored yet
    scale = timing.speed_now(TINY)
    assert scale == pytest.approx(timing.now.speed_now.value(table.statistic) / table.speed_level())
    assert timing.predict_ms(archs[0], now=True) == pytest.approx(scale * timing.predict_ms(archs[0]), rel=1e-12)
    assert TableTiming(tmp_path / "bare", "cpu", "torch", block_size=16, threads=1).speed_now(TINY) is None


def test_resumed_report_keeps_the_speed_of_its_windows(tiny, cfg, tmp_path, monkeypatch):
    """An interrupted report resumes with its measured windows and their reference times."""
    import hwnas.latency.fidelity as fidelity

    monkeypatch.setattr(fidelity, "WINDOW_ARCHS", 5)
    table = built(tiny, cfg, tmp_path)
    cfg = cfg.model_copy(update={"speed_retakes": 0})

    class Interrupted(FakeMeasurer):
        def measure_archs(self, archs, reference=None):
            if self.windows >= 1:
                raise KeyboardInterrupt
            return super().measure_archs(archs, reference)

    with pytest.raises(KeyboardInterrupt):
        fidelity_report(tiny, cfg, table, tmp_path, progress=False, wandb=False,
                        measurer=Interrupted(tiny, cfg, speeds=(1.2,)), retest_n=0)
    rest = FakeMeasurer(tiny, cfg, speeds=(1.0,))
    report = fidelity_report(tiny, cfg, table, tmp_path, progress=False, wandb=False, measurer=rest, retest_n=0)
    assert len(rest.archs_measured) == 5 and report["speed"]["report_ms"] == pytest.approx(
        [1.2 * 1e3 * FakeMeasurer.whole(table.reference), 1e3 * FakeMeasurer.whole(table.reference)])
    assert report["speed"]["at_table_speed"]["mape_pct"] < 1e-6


def test_a_table_without_the_speed_reference_is_measured_again(tiny, cfg, tmp_path):
    path = table_path(tmp_path, "cpu", "torch")
    build_table(tiny, cfg.model_copy(update={"speed_reference": False}), path, progress=False, measurer=FakeMeasurer(tiny, cfg))
    again = FakeMeasurer(tiny, cfg)
    with pytest.warns(UserWarning, match=r"reference: table None, now e\d+-L\d:"):  # the reference named by its key
        table = build_table(tiny, cfg, path, progress=False, measurer=again)
    assert set(again.pieces_measured) == set(table.entries) and table.reference is not None


def test_speed_factors_follow_new_windows_and_the_statistic(tiny, cfg, tmp_path):
    """The per-window factors are worked out once, and again after a window is added or for
    another statistic: never stale."""
    from hwnas.latency.speed import SpeedWindow

    table = built(tiny, cfg, tmp_path)
    key = next(iter(table.window_of))
    ref = table.speed_windows[table.window_of[key]].reference
    assert table.speed_factor(key) == pytest.approx(1.0)  # a steady machine: every window at the median
    slow = dataclasses.replace(ref, median=3 * ref.median, min=3 * ref.median)
    for _ in range(2):  # two slow windows out of four: the median speed moves to the middle
        table.add_speed_window(SpeedWindow("pieces", slow), [])
    assert table.speed_factor(key) == pytest.approx(2.0)
    assert dataclasses.replace(table, statistic="min").speed_factor(key) == pytest.approx(2.0)


def test_speed_window_out_of_range_is_a_table_error(tiny, cfg, tmp_path):
    payload = built(tiny, cfg, tmp_path).payload()
    payload["speed"]["window_of"]["call"] = 7
    with pytest.raises(TableError, match="window"):
        LatencyTable.from_payload(payload)


def test_fidelity_report_scores_the_table_on_what_a_user_times(tiny, cfg, tmp_path, monkeypatch):
    """`n_user_view` held-out subnets are timed as a user does (here a stand-in 20% slower than every
    prediction, in the form of the table's backend) and the table is scored on each statistic."""
    import hwnas.latency.userview as userview

    table = built(tiny, cfg, tmp_path)
    calls = []

    def fake(space_json, arch_json, forms, batch, seq, threads, seed, int4_block_size=32):
        arch = ArchConfig.from_dict(arch_json)
        calls.append((tuple(forms), batch, seq, threads))
        return {forms[0]: {s: 1.2 * table.for_statistic(s).predict_ms(arch) for s in ("median", "p90", "p10", "min")}}

    monkeypatch.setattr(userview, "user_latency", fake)
    report = fidelity_report(tiny, cfg.model_copy(update={"n_user_view": 8}), table, tmp_path, progress=False, wandb=False,
                             measurer=FakeMeasurer(tiny, cfg), retest_n=0)
    u = report["user_view"]
    assert u["n"] == 8 and u["form"] == "torch" and len(calls) == 8 + 2  # a quarter timed again
    assert set(calls) == {(("torch",), table.workload["batch_size"], table.workload["seq_len"], 1)}
    for stat, e in u["by_statistic"].items():
        assert e["prediction"]["within_10pct"] == 0.0 and e["prediction"]["mape_pct"] == pytest.approx(100 / 6), stat
        assert e["retest"]["n"] == 2 and e["retest"]["within_5pct"] == 1.0
    assert [r["arch"] for r in u["rows"]] == [r["arch"] for r in report["rows"][:8]]
    assert "As a user times them: 8 of the subnets" in (tmp_path / "latency" / "fidelity-cpu-torch.md").read_text()
    assert "user_view" not in fidelity_report(tiny, cfg, table, tmp_path, progress=False, wandb=False,
                                              measurer=FakeMeasurer(tiny, cfg), retest_n=0)


def test_a_user_times_each_form_with_a_plain_loop():
    from hwnas.latency.userview import FORMS, time_as_a_user

    arch = HAND_ARCH
    got = time_as_a_user(TINY.model_dump(mode="json"), arch.to_dict(), FORMS, 1, 8, 1, seed=0)
    assert set(got) == set(FORMS)
    assert all(0 < t["min"] <= t["p10"] <= t["median"] <= t["p90"] for t in got.values())
    with pytest.raises(ValueError, match="not among torch, onnxruntime, torch pinned"):
        time_as_a_user(TINY.model_dump(mode="json"), arch.to_dict(), ["tvm"], 1, 8, 1, seed=0)


def test_more_calibration_or_held_out_subnets_than_the_space_holds_is_refused_naming_the_field(tmp_path):
    from hwnas.latency import LatencyConfig
    from hwnas.latency.build import check_stage

    space = SearchSpace(SearchSpaceConfig(depth=[1, 2], embed_dim=[16], head_dim=8, block_size=16, n_heads={"choices": [1]},
                                          mlp_ratio={"choices": [2.0]}, norm={"choices": ["layernorm"]},
                                          norm_placement={"choices": ["pre"]}, attention={"choices": ["softmax"]},
                                          ffn={"choices": ["mlp"]}, weight_bits={"choices": [16]}))
    assert space.size() == 2  # the speed reference and one more
    with pytest.raises(HwnasError, match=r"^latency\.n_correction: 3 distinct subnets asked, but the search space holds 2 "
                                         r"and 1 are taken .*; at most 1$"):
        check_stage(space, LatencyConfig(n_correction=3, n_fidelity=0), tmp_path / "run", ["cpu"], None, None)
    with pytest.raises(HwnasError, match=r"^latency\.n_fidelity: 1 distinct subnets asked, .* at most 0$"):
        check_stage(space, LatencyConfig(n_correction=1, n_fidelity=1), tmp_path / "run", ["cpu"], None, None)
    assert not (tmp_path / "run").exists()
    check_stage(space, LatencyConfig(n_correction=1, n_fidelity=0), tmp_path / "run", ["cpu"], None, None)
