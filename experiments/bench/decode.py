"""Decoding speed by attention kind: one generated token with the cache (`supernet.decode`) against
recomputing the whole context, as the context grows, in eager torch and ONNX Runtime.

The quickstart's standard design (e128-L4, 4 heads of 16, MLP ratio 4, LayerNorm pre, 16 bits), once
per attention kind of the space (softmax; sliding window 32; linear), with the supernet's init
weights (timing does not depend on the values). At each context c the bench times, interleaved so
that drift hits all alike (medians of `--repeats` samples of 10 calls in a row, batch 1, one thread as
the latency tables time):

- torch cached: one token at position c over a cache holding c tokens (restored after each run);
- torch full: the forward of all c+1 tokens, what generating without a cache costs per token;
- onnxruntime cached: `model.decode.onnx` (`export.decode`) with the cache of c tokens as inputs;
- onnxruntime full: the dynamic-length `model.onnx` on c+1 tokens.

    python experiments/bench/decode.py [--contexts 16,32,64,96,127] [--repeats 40] [--no-write]

Run it alone on the machine (a test run beside it moves every figure).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, git_commit, interleaved_medians, machine, write_section  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.export.decode import export_decode_onnx, input_names  # noqa: E402
from hwnas.export.deploy import export_onnx_dynamic, session  # noqa: E402
from hwnas.search_space import ArchConfig, LayerConfig  # noqa: E402
from hwnas.supernet import Supernet, extract_subnet  # noqa: E402
from hwnas.supernet.decode import DecodeCache  # noqa: E402

KINDS = {"softmax": ("softmax", None), "window 32": ("window", 32), "linear": ("linear", None)}
BURST = 10


def burst(fn):
    def run() -> None:
        for _ in range(BURST):
            fn()

    return run


def standard(kind: str, window: int | None) -> ArchConfig:
    return ArchConfig(128, tuple(LayerConfig(4, 4.0, "layernorm", "pre", kind, window, "mlp") for _ in range(4)))


def torch_cached(model, cache: DecodeCache, token: torch.Tensor):
    """One decoding step over `cache`, which is restored afterwards (its tensors are replaced, never edited)."""
    saved = [(c.k, c.v, c.state) for c in cache.layers]
    pos = cache.pos

    @torch.no_grad()
    def run() -> None:
        model(token, cache=cache)
        for c, (k, v, s) in zip(cache.layers, saved, strict=True):
            c.k, c.v, c.state = k, v, s
        cache.pos = pos

    return run


def onnx_cached(sess, form, cache: DecodeCache, token: torch.Tensor):
    past = [t.numpy() for t in cache.tensors(form)]
    feeds = dict(zip(input_names(form.arch), [token.numpy(), np.array(cache.pos, dtype=np.int64), *past], strict=True))
    return lambda: sess.run(None, feeds)


def bench_kind(net: Supernet, kind: str, window: int | None, contexts: list[int], repeats: int) -> list[dict]:
    sub = extract_subnet(net, standard(kind, window)).eval()
    decode_graph, form = export_decode_onnx(sub)
    full_graph, _ = export_onnx_dynamic(sub)
    step_sess, full_sess = session(decode_graph, 1), session(full_graph, 1)
    tokens = torch.randint(0, 256, (1, max(contexts) + 1), generator=torch.Generator().manual_seed(0))
    rows = []
    for c in contexts:
        cache = DecodeCache.of(sub)
        with torch.no_grad():
            sub(tokens[:, :c], cache=cache)
        token, upto = tokens[:, c:c + 1], tokens[:, :c + 1]
        fns = {
            "torch_cached": torch_cached(sub, cache, token),
            "torch_full": lambda upto=upto: sub(upto),
            "ort_cached": onnx_cached(step_sess, form, cache, token),
            "ort_full": lambda upto=upto: full_sess.run(None, {"tokens": upto.numpy()}),
        }
        with torch.no_grad():  # each sample: BURST calls in a row (a lone call would pay for the other runs' cache misses)
            ms = {k: 1e3 * v / BURST for k, v in interleaved_medians({k: burst(f) for k, f in fns.items()}, repeats, 3).items()}
        rows.append({"kind": kind if window is None else f"{kind} {window}", "context": c, "cache_kib": cache.nbytes() / 1024, **ms})
    return rows


def table(rows: list[dict]) -> str:
    out = ["| attention | context | cache KiB | torch cached ms | torch full ms | full / cached | ORT cached ms | ORT full ms "
           "| full / cached | ORT cached tokens/s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['kind']} | {r['context']} | {r['cache_kib']:.1f} | {r['torch_cached']:.3f} | {r['torch_full']:.3f} | "
                   f"{r['torch_full'] / r['torch_cached']:.1f}x | {r['ort_cached']:.3f} | {r['ort_full']:.3f} | "
                   f"{r['ort_full'] / r['ort_cached']:.1f}x | {1e3 / r['ort_cached']:.0f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", default="16,32,64,96,127", help="context lengths (tokens already read), each < the block size")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    args = p.parse_args()
    cfg = load_config(Path(__file__).resolve().parents[1] / "quickstart.yaml")
    contexts = [int(c) for c in args.contexts.split(",")]
    if not contexts or min(contexts) < 1 or max(contexts) >= cfg.search_space.block_size:
        sys.exit(f"--contexts: each in 1..{cfg.search_space.block_size - 1}, got {args.contexts}")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = Supernet(cfg.search_space).eval()
    rows = [r for kind, window in KINDS.values() for r in bench_kind(net, kind, window, contexts, args.repeats)]
    body = (f"`{command()}` on {machine()} (commit {git_commit()}); batch 1, 1 thread, medians of {args.repeats} interleaved samples of {BURST} calls in a row.\n\n"
            "The quickstart's standard design (e128-L4, h4 r4, LayerNorm pre, MLP, 16 bits) with each attention kind: one new "
            "token over the cache (`supernet.decode`, `model.decode.onnx`) against the forward of the whole context "
            "(generation without a cache).\n\n" + table(rows))
    print(body)
    if not args.no_write:
        write_section("Decoding: cached steps against recomputing the context, by attention kind", body)


if __name__ == "__main__":
    main()
