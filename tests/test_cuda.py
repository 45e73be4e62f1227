"""The CUDA path, where a GPU is: the supernet and its deployed subnet on CUDA (Triton norm, low-bit and
linear-attention kernels under the default dispatch) against the same weights on the CPU, a training
step in bf16 autocast, and a CUDA-event timing. Each test skips, with the reason, without a GPU
(`experiments/bench/gpu.py` runs this file on the GPU machine)."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the CUDA path cannot run here")

from hwnas.search_space import ArchConfig, LayerConfig, SearchSpaceConfig  # noqa: E402
from tests.tiny import perturbed_supernet  # noqa: E402

GPU = "cuda"  # (set to "cpu", these bodies run on the CPU: how their calls were checked without a GPU)
L = LayerConfig
SPACE = SearchSpaceConfig(
    depth=[3], embed_dim=[32, 64], head_dim=8, block_size=32, n_heads={"choices": [2, 4]}, mlp_ratio={"choices": [2.0, 4.0]},
    norm_placement={"choices": ["pre", "post", "peri"], "per_layer": True},
    attention={"choices": ["softmax", "linear", "window"], "windows": [8]},
    ffn={"choices": ["mlp", "swiglu", "moe"], "experts": [2], "top_k": [1, 2]}, weight_bits={"choices": [16, 8, 4]},
)
ARCH = ArchConfig(32, (L(2, 4.0, "layernorm", "pre", "softmax", None, "mlp", weight_bits=16),
                       L(4, 2.0, "rmsnorm", "post", "linear", None, "swiglu", weight_bits=8),
                       L(2, 2.0, "dyt", "peri", "window", 8, "moe", 2, 2, weight_bits=4)))  # top-2 of 2: no routing tie to flip


@pytest.fixture(scope="module")
def nets():
    cpu = perturbed_supernet(SPACE).eval()
    return cpu, copy.deepcopy(cpu).to(GPU)


def tokens(device: str) -> torch.Tensor:
    return torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0)).to(device)


def test_the_supernet_on_cuda_equals_the_cpu(nets):
    cpu, gpu = nets
    with torch.no_grad():
        want, got = cpu(tokens("cpu"), ARCH), gpu(tokens(GPU), ARCH)
    torch.testing.assert_close(got.cpu(), want, atol=1e-3, rtol=1e-3)  # fp32 on both; reductions in another order


def test_the_deployed_subnet_on_cuda_runs_its_low_bit_layers_on_the_kernels(nets):
    from hwnas.kernels import LowBitLinear
    from hwnas.supernet import extract_subnet
    from hwnas.supernet.deploy import torch_deploy_copy

    cpu, gpu = nets
    sub_cpu, sub_gpu = (torch_deploy_copy(extract_subnet(n, ARCH).eval(), d) for n, d in ((cpu, "cpu"), (gpu, GPU)))
    assert any(isinstance(m, LowBitLinear) for m in sub_gpu.modules())
    with torch.no_grad():
        want, got = sub_cpu(tokens("cpu")), sub_gpu(tokens(GPU))
    # int8 on CPU is dynamic (activations quantized too), on CUDA weight-only: close, not equal
    assert torch.corrcoef(torch.stack([got.cpu().flatten(), want.flatten()]))[0, 1] > 0.98


def test_a_training_step_in_bf16_autocast_lowers_the_loss(nets):
    net = copy.deepcopy(nets[1]).train()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    x = tokens(GPU)
    losses = []
    for _ in range(5):
        with torch.autocast(GPU, dtype=torch.bfloat16):
            logits = net(x[:, :-1], ARCH)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses


def test_cuda_tables_time_with_cuda_events(nets):
    from hwnas.latency.backends import make_backend
    from hwnas.latency.protocol import Protocol
    from hwnas.supernet import extract_subnet

    backend = make_backend("torch", GPU)
    sub = extract_subnet(nets[1], ARCH).eval()
    m = backend.measure(sub, (tokens(GPU),), Protocol(warmup=3, min_repeats=10, max_repeats=50, max_seconds=1.0))
    assert 0 < m.median < 1.0 and m.n >= 10
