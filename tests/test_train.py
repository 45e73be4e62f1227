"""Supernet training: resume equals uninterrupted, W&B offline logging, non-finite steps, evaluate,
the schedule, and complexity-aware sampling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import hwnas.supernet.train as train_mod
from hwnas.core.rundir import RunDirError
from hwnas.core.tracking import read_wandb_records, read_wandb_runs
from hwnas.search_space import SearchSpace, SearchSpaceConfig
from hwnas.supernet.config import TrainConfig
from hwnas.supernet.data import Corpus, CorpusError
from hwnas.supernet.evaluate import evaluate
from hwnas.supernet.train import SandwichSampler, Trainer, TrainingError, load_supernet, lr_at, train
from tests.tiny import wandb_when

TINY = SearchSpaceConfig(
    depth=[1, 2], embed_dim=[16, 32], head_dim=8, block_size=32,
    n_heads={"choices": [1, 2]}, mlp_ratio={"choices": [2.0, 4.0]},
    attention={"choices": ["softmax", "linear", "window"], "windows": [8]},
    ffn={"choices": ["mlp", "swiglu", "moe"], "experts": [2], "top_k": [1, 2]},
)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text")
    stdlib = Path(json.__file__).parent.parent
    for name in ["json/decoder.py", "json/encoder.py", "textwrap.py", "glob.py", "shlex.py", "fnmatch.py"]:
        (root / Path(name).name).write_text((stdlib / name).read_text())
    return root


def tiny_cfg(text_dir: Path, **kw) -> TrainConfig:
    base = dict(corpus=str(text_dir), steps=8, warmup_steps=2, batch_size=4, ckpt_every=3, eval_every=4,
                eval_tokens=1024, log_every=1, wandb="disabled", lr=1e-2, min_lr=1e-3, val_fraction=0.2)
    return TrainConfig(**(base | kw))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(run_dir / "train" / "checkpoint.safetensors")).items()
            if k.startswith(("model/", "optim/", "average/"))}


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(("kill_at", "ema_decay", "recipe"), [
    (4, 0.0, {}), (6, 0.0, {}), (4, 0.9, {}),
    (4, 0.0, {"parent_fraction": 0.5, "random_weight": 0.5}),  # resumed at step 3, the parent-first phase ends at 4
])
def test_resumed_run_equals_uninterrupted(tmp_path, text_dir, kill_at, ema_decay, recipe):
    cfg = tiny_cfg(text_dir, ema_decay=ema_decay, **recipe)
    train(TINY, cfg, tmp_path / "full", progress=False)

    def boom(step: int) -> None:
        if step == kill_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(TINY, cfg, tmp_path / "cut", progress=False, on_step_end=boom).run()
    meta = json.loads(__import__("safetensors").safe_open(str(tmp_path / "cut/train/checkpoint.safetensors"), "pt").metadata()["meta"])
    assert meta["state"]["step"] == 3 * ((kill_at + 1) // 3)  # the last checkpoint before the kill
    train(TINY, cfg, tmp_path / "cut", progress=False)

    full, cut = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert full.keys() == cut.keys()
    assert any(k.startswith("average/") for k in full) == (ema_decay > 0)
    for k in full:
        assert torch.equal(full[k], cut[k]), k
    rows = lambda p: [json.loads(line) for line in (p / "train/metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "cut") == [
        {k: v for k, v in r.items() if k != "tokens_per_s"} | ({"tokens_per_s": r2["tokens_per_s"]} if "tokens_per_s" in r else {})
        for r, r2 in zip(rows(tmp_path / "full"), rows(tmp_path / "cut"), strict=True)
    ]
    assert json.loads((tmp_path / "full/train/summary.json").read_text())["val_loss_largest"] == pytest.approx(
        json.loads((tmp_path / "cut/train/summary.json").read_text())["val_loss_largest"], abs=0)


def test_training_learns_and_logs_to_wandb_offline(tmp_path, text_dir):
    cfg = tiny_cfg(text_dir, steps=30, warmup_steps=3, wandb="offline", eval_every=15, log_every=5)
    summary = train(TINY, cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run/train/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss_largest" in r]
    assert steps[-1]["loss_largest"] < steps[0]["loss_largest"] - 0.5
    assert summary["val_bpb_largest"] < summary["unigram_entropy_bpb"] + 1.0
    history = wandb_when(tmp_path / "run", lambda h: any("val_bpb_smallest" in row for row in h))
    logged = set().union(*history)
    for key in ["loss_largest", "loss_smallest", "loss_random", "lr", "tokens_per_s", "grad_norm", "val_bpb_largest", "val_bpb_smallest"]:
        assert key in logged, key
    train_rows = [h for h in history if "loss_largest" in h]
    assert [h["loss_largest"] for h in train_rows] == pytest.approx([r["loss_largest"] for r in steps])
    assert [h["step"] for h in train_rows] == [r["step"] for r in steps]  # losses plotted against the training step
    (run,) = read_wandb_runs(tmp_path / "run")
    assert (run["name"], run["group"], run["job_type"]) == ("run-train", "run", "train")
    assert run["metrics"] == {"step": None, "*": "step"}
    assert any(t.startswith("config-") and len(t) == 19 for t in run["tags"])
    # a file that wandb-core is still writing, or one damaged, reads as the records before the cut
    (path,) = (tmp_path / "run").rglob("*.wandb")
    data = path.read_bytes()  # one snapshot: the reads below do not race wandb-core's writes
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn/run-x.wandb").write_bytes(data)
    whole = read_wandb_records(tmp_path / "torn")
    assert len(whole) > 10
    counts = []
    for cut in sorted({7, 8, 20, len(data) // 3, len(data) // 2, *range(len(data) - 40, len(data))}):
        (tmp_path / "torn/run-x.wandb").write_bytes(data[:cut])
        records = read_wandb_records(tmp_path / "torn")
        assert records == whole[:len(records)]
        counts.append(len(records))
    # more of the file, more records: none before the first full one, all but the last one byte short
    assert counts == sorted(counts) and counts[0] == 0 and counts[4] > 0 and counts[-1] >= len(whole) - 1
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (tmp_path / "torn/run-x.wandb").write_bytes(bytes(flipped))
    assert 0 < len(read_wandb_records(tmp_path / "torn")) < len(whole)


def test_nonfinite_loss_skips_the_step_and_repeated_ones_stop(tmp_path, text_dir, monkeypatch):
    real_ce = train_mod.F.cross_entropy
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # the 2nd step's largest-subnet loss is NaN (4 subnets per step)
        calls["n"] += 1
        out = real_ce(*args, **kwargs)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(train_mod.F, "cross_entropy", flaky)
    cfg = tiny_cfg(text_dir, steps=3, ckpt_every=1)
    seen = {}

    def snapshot(step: int) -> None:
        seen[step] = weights(tmp_path / "run")

    Trainer(TINY, cfg, tmp_path / "run", progress=False, on_step_end=snapshot).run()
    for k in seen[0]:
        if k.startswith("model/"):
            assert torch.equal(seen[0][k], seen[1][k]), f"{k} changed on the skipped step"
    assert json.loads((tmp_path / "run/train/summary.json").read_text())["nonfinite_skipped"] == 1
    rows = [json.loads(line) for line in (tmp_path / "run/train/metrics.jsonl").read_text().splitlines()]
    assert {"step": 1, "nonfinite_skipped": 1} in rows

    monkeypatch.setattr(train_mod.F, "cross_entropy", lambda *a, **k: real_ce(*a, **k) * float("nan"))
    with pytest.raises(TrainingError, match=r"training stopped at step 2: 3 consecutive non-finite losses"):
        train(TINY, tiny_cfg(text_dir, steps=6, max_nonfinite=3), tmp_path / "bad", progress=False)


def test_missing_corpus_gives_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        train(TINY, tiny_cfg(tmp_path / "nope"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "train").exists()
    assert not (tmp_path / "run" / "corpus").exists()


def test_weight_average_is_the_moving_average_and_later_stages_load_it(tmp_path, text_dir):
    from hwnas.supernet import Supernet

    cfg, seen = tiny_cfg(text_dir, steps=5, ema_decay=0.5), []
    trainer = Trainer(TINY, cfg, tmp_path / "run", progress=False,
                      on_step_end=lambda step: seen.append({k: v.clone() for k, v in trainer.model.state_dict().items()}))
    trainer.run()
    torch.manual_seed(0)
    expected = {k: v.clone() for k, v in Supernet(TINY).state_dict().items() if v.is_floating_point()}
    for t, live in enumerate(seen):  # avg = d * avg + (1 - d) * w, d = min(decay, (1 + t) / (10 + t))
        d = min(0.5, (1 + t) / (10 + t))
        expected = {k: d * v + (1 - d) * live[k] for k, v in expected.items()}
    stored = load_file(str(tmp_path / "run/train/checkpoint.safetensors"))
    loaded = load_supernet(tmp_path / "run", TINY).state_dict()
    for k, v in expected.items():
        assert torch.allclose(stored[f"average/{k}"], v, atol=1e-6), k
        assert torch.equal(loaded[k], stored[f"average/{k}"]), k  # search, predictors and export see the average
    assert any(not torch.equal(stored[f"model/{k}"], stored[f"average/{k}"]) for k in expected)
    assert torch.equal(stored["model/" + next(iter(expected))], seen[-1][next(iter(expected))])  # resume state: live weights


def test_checkpoint_of_another_space_is_refused(tmp_path, text_dir):
    train(TINY, tiny_cfg(text_dir, steps=3), tmp_path / "run", progress=False)
    other = TINY.model_copy(update={"embed_dim": [16, 48]})
    before = (tmp_path / "run" / "train" / "checkpoint.safetensors").read_bytes()
    with pytest.raises(RunDirError, match=r"another search space \(search_space.embed_dim\[1\]: 32 there, 48 in this config\)"):
        train(other, tiny_cfg(text_dir, steps=4), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "train" / "checkpoint.safetensors").read_bytes() == before


def test_evaluate_is_deterministic_and_in_bits_per_byte(tmp_path, text_dir):
    train(TINY, tiny_cfg(text_dir, steps=3), tmp_path / "run", progress=False)
    net = load_supernet(tmp_path / "run", TINY)
    corpus = Corpus.load(tmp_path / "run" / "corpus")
    arch = net.space.sample(0)
    a = evaluate(net, arch, corpus, batch_size=4, seq_len=32, max_tokens=2048)
    b = evaluate(net, arch, corpus, batch_size=8, seq_len=32, max_tokens=2048)
    assert a["tokens"] == b["tokens"] > 0
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["bpb"] == pytest.approx(a["loss"] / math.log(2))
    from hwnas.supernet import extract_subnet

    sub = evaluate(extract_subnet(net, arch), None, corpus, batch_size=4, seq_len=32, max_tokens=2048)
    assert sub["loss"] == pytest.approx(a["loss"], rel=1e-5)


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_parent_first_phase_trains_the_largest_alone_then_the_sandwich():
    space = SearchSpace(SearchSpaceConfig())
    sampler = SandwichSampler(space, TrainConfig(steps=10, warmup_steps=1, parent_fraction=0.3, n_random=2), seed=0)
    assert [sampler.archs(s) for s in range(3)] == [[("largest", space.largest())]] * 3
    assert [r for r, _ in sampler.archs(3)] == ["largest", "smallest", "random", "random"]
    with pytest.raises(ValueError, match="parent_fraction"):
        TrainConfig(parent_fraction=1.0)


def test_random_weight_scales_only_the_random_subnets(tmp_path, text_dir):
    def trained(name: str, **kw) -> dict[str, torch.Tensor]:
        train(TINY, tiny_cfg(text_dir, steps=3, ckpt_every=3, **kw), tmp_path / name, progress=False)
        return {k: v for k, v in weights(tmp_path / name).items() if k.startswith("model/")}

    def same(a, b) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    assert not same(trained("w1"), trained("w25", random_weight=0.25))
    assert same(trained("n0w1", n_random=0), trained("n0w25", n_random=0, random_weight=0.25))


def test_sandwich_has_largest_smallest_and_random_and_complexity_aware_bounds_the_gap():
    space = SearchSpace(SearchSpaceConfig())
    plain = SandwichSampler(space, TrainConfig(n_random=3), seed=0)
    roles = [r for r, _ in plain.archs(0)]
    assert roles == ["largest", "smallest", "random", "random", "random"]
    assert plain.archs(5) == SandwichSampler(space, TrainConfig(n_random=3), seed=0).archs(5)  # owned randomness

    def gaps(sampler) -> list[float]:
        flops = [space.flops(a) for s in range(200) for r, a in sampler.archs(s) if r == "random"]
        return [abs(b / a - 1) for a, b in zip(flops, flops[1:], strict=False)]

    aware = SandwichSampler(space, TrainConfig(n_random=1, complexity_aware=True, flops_gap=0.2), seed=0)
    free = SandwichSampler(space, TrainConfig(n_random=1), seed=0)
    assert np.mean(np.array(gaps(aware)) <= 0.2) > 0.95
    assert np.mean(np.array(gaps(free)) <= 0.2) < 0.6
