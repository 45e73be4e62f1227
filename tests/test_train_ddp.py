"""Data-parallel training: 2 CPU processes under torchrun (gloo) keep identical replicas and
match a single process that trains on the same global batch."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from hwnas.supernet import Supernet
from tests.test_train import TINY, text_dir, tiny_cfg  # noqa: F401  (fixture)

SCRIPT = textwrap.dedent('''
    import os, sys
    from safetensors.torch import save_file
    from hwnas.search_space import SearchSpaceConfig
    from hwnas.supernet.config import TrainConfig
    from hwnas.supernet.train import Trainer
    space = SearchSpaceConfig.model_validate_json(open(sys.argv[1]).read())
    cfg = TrainConfig.model_validate_json(open(sys.argv[2]).read())
    trainer = Trainer(space, cfg, sys.argv[3], progress=False)
    trainer.run()
    rank = os.environ.get("RANK", "0")
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, os.path.join(sys.argv[3], f"rank{rank}.safetensors"))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_single_process(tmp_path, text_dir):  # noqa: F811
    cfg = tiny_cfg(text_dir, steps=4, batch_size=4, ckpt_every=2, balance_weight=0.0)  # see the gap check below
    (tmp_path / "space.json").write_text(TINY.model_dump_json())
    (tmp_path / "train.json").write_text(cfg.model_dump_json())
    (tmp_path / "run.py").write_text(SCRIPT)
    args = [str(tmp_path / "run.py"), str(tmp_path / "space.json"), str(tmp_path / "train.json")]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", *args, str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, *args, str(tmp_path / "single")], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    r0, r1 = load_file(str(tmp_path / "ddp/rank0.safetensors")), load_file(str(tmp_path / "ddp/rank1.safetensors"))
    one = load_file(str(tmp_path / "single/rank0.safetensors"))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"replicas differ in {k}"
    torch.manual_seed(0)  # the trainer's initialization
    init = Supernet(TINY).state_dict()
    flat = lambda sd: torch.cat([sd[k].reshape(-1).float() for k in sorted(r0)])  # noqa: E731
    update = (flat(one) - flat(init)).norm()
    gap = (flat(r0) - flat(one)).norm()
    assert update > 0.1  # training moved the weights
    # measured: 0.001% (float summation order); the MoE balance loss is left out (weight 0) because each
    # rank computes it over its own tokens, as in common MoE data-parallel training
    assert gap / update < 1e-3, f"DDP and single-process runs differ by {gap / update:.3%} of the update"
    ckpt = load_file(str(tmp_path / "ddp/train/checkpoint.safetensors"))
    for k in r0:
        assert torch.equal(ckpt[f"model/{k}"], r0[k])
    assert not (tmp_path / "ddp" / "train" / "rank1").exists()


@pytest.mark.parametrize("batch", [3])
def test_batch_not_divisible_by_ranks_is_an_error(tmp_path, text_dir, batch, monkeypatch):  # noqa: F811
    from hwnas.supernet import train as train_mod

    monkeypatch.setattr(train_mod, "init_distributed", lambda kind: train_mod.Dist(rank=0, world=2))
    with pytest.raises(train_mod.TrainingError, match="train.batch_size: 3 is not divisible by the 2 ranks"):
        train_mod.Trainer(TINY, tiny_cfg(text_dir, batch_size=batch), tmp_path / "run", progress=False)
