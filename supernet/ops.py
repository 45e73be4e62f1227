"""Functional building blocks shared by the supernet and its extracted subnets.

Both call these with weight tensors: the supernet with slices of its largest weights, a subnet with
its own. One code path for the math keeps `extract_subnet(...)(x) == supernet(x, arch)` exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from hwnas import kernels
from hwnas.search_space import LINEAR_CHUNK

EPS = 1e-5


# --- embedding ------------------------------------------------------------------------------------
def embed(tokens: Tensor, tok_emb: Tensor, pos_emb: Tensor | None) -> Tensor:
    """Token plus learned position embeddings (None: rope or no positions), scaled by sqrt(width)
    (as Gemma does): (B, T, d)."""
    x = F.embedding(tokens, tok_emb)
    return (x if pos_emb is None else x + pos_emb) * math.sqrt(tok_emb.shape[-1])


# --- quantization ---------------------------------------------------------------------------------
def fake_quant(w: Tensor, bits: int) -> Tensor:
    """Symmetric per-output-channel (last dim reduced) fake quantization with a straight-through
    estimator: forward sees the int grid, backward passes the gradient unchanged. 16 = none."""
    if bits >= 16:
        return w
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / qmax
    wq = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
    return w + (wq - w).detach()


# --- norms ----------------------------------------------------------------------------------------
def crms_norm(x: Tensor, weight: Tensor) -> Tensor:
    """CRMSNorm (Jiang et al. 2023): RMSNorm of the zero-mean (d+1)-vector that x compresses, whose
    dropped coordinate is -sum(x): x / sqrt((|x|^2 + sum(x)^2) / (d+1) + eps) * weight."""
    ss = x.pow(2).sum(dim=-1, keepdim=True) + x.sum(dim=-1, keepdim=True).pow(2)
    return x * torch.rsqrt(ss / (x.shape[-1] + 1) + EPS) * weight


def rms_norm_explicit(x: Tensor, weight: Tensor) -> Tensor:
    """RMSNorm written out (x / sqrt(mean(x^2) + eps) * w): the pattern ONNX Runtime fuses, for
    exporters without `rms_norm`."""
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + EPS) * weight


@dataclass(frozen=True)
class NormOp:
    """The math of a norm kind (`search_space.kinds.NORMS` names its parameters): `fn(x, **params)`
    over the last dim, with the weights already at that width; `deploy`, when set, is the same math
    in a form the ONNX exporters take."""

    fn: Callable[..., Tensor]
    deploy: Callable[..., Tensor] | None = None


NORM_OPS: dict[str, NormOp] = {
    "layernorm": NormOp(lambda x, weight, bias: F.layer_norm(x, (x.shape[-1],), weight, bias, EPS)),
    "rmsnorm": NormOp(lambda x, weight: F.rms_norm(x, (x.shape[-1],), weight, EPS), deploy=rms_norm_explicit),
    "dyt": NormOp(lambda x, alpha, weight, bias: torch.addcmul(bias, weight, torch.tanh(alpha * x))),  # Dynamic Tanh
    "crmsnorm": NormOp(crms_norm),
}


def norm(kind: str, x: Tensor, **params: Tensor) -> Tensor:
    """Norm `kind` of x over the last dim with its parameters by name (`NORMS[kind].params`)."""
    if kind not in NORM_OPS:
        raise ValueError(f"norm kind {kind!r} is not one of {', '.join(NORM_OPS)}")
    return NORM_OPS[kind].fn(x, **params)


def deploy_norm(kind: str, x: Tensor, **params: Tensor) -> Tensor:
    """`norm` in its export form (the same math)."""
    op = NORM_OPS[kind]
    return (op.deploy or op.fn)(x, **params)


# --- norm placement -------------------------------------------------------------------------------
# A sublayer (attention or FFN) wraps its core in norms and a residual add, by placement:
#     pre:  x + core(norm_in(x))      post: norm_in(x + core(x))      peri: x + norm_out(core(norm_in(x)))
def core_input(placement: str, x: Tensor, norm_in: Callable[[Tensor], Tensor]) -> Tensor:
    """What the sublayer's core reads."""
    return x if placement == "post" else norm_in(x)


def combine(placement: str, x: Tensor, y: Tensor, norm_in: Callable[[Tensor], Tensor],
            norm_out: Callable[[Tensor], Tensor] | None) -> Tensor:
    """The sublayer's output from its input x and its core's output y."""
    if placement == "pre":
        return x + y
    if placement == "post":
        return norm_in(x + y)
    if placement == "peri":
        return x + norm_out(y)
    raise ValueError(f"norm placement {placement!r} is not one of pre, post, peri")


# --- attention ------------------------------------------------------------------------------------
def qkv_project(x: Tensor, w_qkv: Tensor, n_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, T, d), w_qkv (3, nh*hs, d) -> q, k, v each (B, nh, T, hs), in one batched matmul."""
    B, T, d = x.shape
    qkv = torch.matmul(x.reshape(1, B * T, d), w_qkv.transpose(1, 2))  # (3, B*T, nh*hs)
    qkv = qkv.view(3, B, T, n_heads, -1).transpose(2, 3)  # (3, B, nh, T, hs)
    return qkv[0], qkv[1], qkv[2]


ROPE_BASE = 10000.0  # the rotary frequencies' base (RoFormer, Llama)


def rope(x: Tensor, pos: int | Tensor = 0) -> Tensor:
    """Rotary position embedding (RoFormer) of queries or keys x (B, nh, T, hs) at positions
    pos .. pos+T-1: each pair (x[i], x[i + hs/2]) turns by the angle position * ROPE_BASE^(-2i/hs)
    (the half-split pairing of GPT-NeoX and Llama). A dot product of a rotated query and key then
    depends on their distance alone. `pos` a 0-d tensor: the exported decoding graph's form."""
    return _rotate(x, *_rope_angles(x, pos))


def rope_qk(q: Tensor, k: Tensor, pos: int | Tensor = 0) -> tuple[Tensor, Tensor]:
    """`rope` of queries and keys at the same positions, the angles computed once."""
    cos, sin = _rope_angles(q, pos)
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rope_angles(x: Tensor, pos: int | Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin (T, hs/2) of the rotation angles of x's T positions from `pos`."""
    T, half = x.shape[-2], x.shape[-1] // 2
    inv_freq = ROPE_BASE ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    t = (torch.arange(T, device=x.device) + pos).to(torch.float32)
    angle = t.view(T, 1) * inv_freq.view(1, half)
    return angle.cos().to(x.dtype), angle.sin().to(x.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def window_mask(n_blocks: int, w: int, device) -> Tensor:
    """(n, w, 2w) bool: query i of block j sees key m of the (previous, current) block pair iff the
    key is causal, within the window and not before position 0."""
    i = torch.arange(w, device=device).view(1, w, 1)
    m = torch.arange(2 * w, device=device).view(1, 1, 2 * w)
    j = torch.arange(n_blocks, device=device).view(n_blocks, 1, 1)
    return (m > i) & (m <= i + w) & (j * w - w + m >= 0)


def window_attention(q: Tensor, k: Tensor, v: Tensor, window: int, unfold: bool = True) -> Tensor:
    """Causal sliding-window softmax attention: token t sees tokens t-window+1 .. t.

    Blocked: queries in blocks of `window` attend to their block and the one before, so the work
    is O(T * window) rather than O(T^2). The (previous, current) key blocks come from `unfold`,
    or (`unfold=False`, for the ONNX exporters, which do not take it) from slicing and
    concatenation; same math."""
    B, nh, T, hs = q.shape
    w = window
    if isinstance(T, int) and T <= w:  # (a symbolic length, the exported graph's: the blocked form for every T)
        return softmax_attention(q, k, v)
    n = (T + w - 1) // w
    pad = n * w - T
    qb = F.pad(q, (0, 0, 0, pad)).reshape(B * nh, n, w, hs)  # (B*nh, n, w, hs)
    # one empty block in front: (B, nh, (n+1)*w, hs) -> block pairs (B*nh, n, 2w, hs)
    kb, vb = (_block_pairs(F.pad(t, (0, 0, w, pad)), n, w, unfold) for t in (k, v))
    y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=window_mask(n, w, q.device))
    return y.reshape(B, nh, n * w, hs)[:, :, :T]


def _block_pairs(x: Tensor, n: int, w: int, unfold: bool) -> Tensor:
    """(B, nh, (n+1)*w, hs) -> (B*nh, n, 2w, hs): block j-1 then block j, for j = 1..n."""
    B, nh, _, hs = x.shape
    if unfold:
        return x.unfold(2, 2 * w, w).transpose(-1, -2).reshape(B * nh, n, 2 * w, hs)
    blocks = x.reshape(B * nh, n + 1, w, hs)
    return torch.cat([blocks[:, :-1], blocks[:, 1:]], dim=2)


def linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal linear attention with feature map elu+1, in chunks of LINEAR_CHUNK tokens: exact
    softmax-free attention within a chunk, a running (hs x hs+1) state across chunks; O(T).

    `hwnas.kernels.linear_attention`: the Triton kernel on CUDA at inference, else its torch
    reference (whose values carry a ones column, so the same products give the normalizer)."""
    return kernels.linear_attention(q, k, v, LINEAR_CHUNK)


def linear_attention_state(q: Tensor, k: Tensor, v: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Causal linear attention (feature map elu+1) as a cumulative sum of the running state
    sum_{s<=t} k_s^T [v_s, 1] (the ones column carries the normalizer), continuing from the recurrent
    `state` (B, nh, hs, hs+1) of the tokens before (None: none): (output (B, nh, T, hs), the state
    after the last token). Cached decoding's form; `linear_attention` is the chunked one."""
    hs = q.shape[-1]
    q, k = F.elu(q) + 1, F.elu(k) + 1
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, nh, T, hs+1)
    states = torch.cumsum(k.unsqueeze(-1) * v1.unsqueeze(-2), dim=2)  # (B, nh, T, hs, hs+1)
    if state is not None:
        states = states + state.unsqueeze(2)
    out = torch.matmul(q.unsqueeze(-2), states).squeeze(-2)  # (B, nh, T, hs+1)
    return out[..., :hs] / out[..., hs:].clamp_min(EPS), states[:, :, -1]


# --- cached decoding ------------------------------------------------------------------------------
@dataclass
class LayerCache:
    """What one attention layer keeps between decoding steps: the keys and values of the tokens
    before (softmax: all of them; sliding window: the last window-1), or linear attention's
    recurrent state (B, nh, hs, hs+1), whose size does not grow with the context."""

    k: Tensor | None = None  # (B, nh, L, hs)
    v: Tensor | None = None
    state: Tensor | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.state) if t is not None)


def cached_attention(kind: str, q: Tensor, k: Tensor, v: Tensor, window: int | None, cache: LayerCache,
                     pos: int | Tensor) -> Tensor:
    """The attention of `kind` for new tokens at positions pos .. pos+T-1 (q, k, v (B, nh, T, hs)),
    given what `cache` holds of the tokens before; updates `cache`. Equal to `attention` on the
    whole sequence at those positions. `pos` a 0-d tensor: the exported decoding graph's form
    (no data-dependent branch, the cache always given, possibly empty)."""
    if kind == "linear":
        y, cache.state = linear_attention_state(q, k, v, cache.state)
        return y
    if kind not in ("softmax", "window"):
        raise ValueError(f"attention kind {kind!r} is not one of softmax, linear, window")
    keys = k if cache.k is None else torch.cat([cache.k, k], dim=2)
    values = v if cache.v is None else torch.cat([cache.v, v], dim=2)
    T, L = q.shape[2], keys.shape[2]
    q_pos = (torch.arange(T, device=q.device) + pos).view(T, 1)
    k_pos = (torch.arange(L, device=q.device) + (pos + T - L)).view(1, L)  # the keys' positions
    mask = k_pos <= q_pos
    if kind == "window":
        mask = mask & (k_pos > q_pos - window)
    eager_all = isinstance(pos, int) and bool(mask.all())  # e.g. one new token: no mask, the faster kernel
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=None if eager_all else mask)
    if kind == "window":  # a window keeps the last window-1 keys (all of them while there are fewer)
        keep = window - 1
        keys, values = (keys[:, :, -keep:], values[:, :, -keep:]) if keep else (keys[:, :, :0], values[:, :, :0])
    cache.k, cache.v = keys, values
    return y


def attention(kind: str, q: Tensor, k: Tensor, v: Tensor, window: int | None) -> Tensor:
    if kind == "softmax":
        return softmax_attention(q, k, v)
    if kind == "window":
        return window_attention(q, k, v, window)
    if kind == "linear":
        return linear_attention(q, k, v)
    raise ValueError(f"attention kind {kind!r} is not one of softmax, linear, window")


# --- feed-forward ---------------------------------------------------------------------------------
def mlp(x: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    return F.linear(F.gelu(F.linear(x, w_up)), w_down)


def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def route(x: Tensor, w_router: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k routing. x (N, d) -> gates (N, k) (the softmax probabilities of the chosen experts),
    expert ids (N, k), and the Switch-Transformer load-balancing loss."""
    probs = F.softmax(F.linear(x, w_router), dim=-1)  # (N, E)
    gates, idx = probs.topk(top_k, dim=-1)
    n_experts = probs.shape[-1]
    load = F.one_hot(idx, n_experts).sum(dim=(0, 1)).float() / idx.numel()  # share of assignments
    balance = n_experts * torch.sum(load * probs.mean(dim=0))
    return gates, idx, balance


def moe(x: Tensor, w_router: Tensor, top_k: int, experts_up: list[Tensor], experts_down: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Mixture of GELU-MLP experts: each token runs its top-k experts, weighted by their gates.
    x (B, T, d) -> (y (B, T, d), load-balancing loss)."""
    B, T, d = x.shape
    flat = x.reshape(B * T, d)
    gates, idx, balance = route(flat, w_router, top_k)
    experts = [partial(mlp, w_up=w_up, w_down=w_down) for w_up, w_down in zip(experts_up, experts_down, strict=True)]
    return expert_mix(flat, gates, idx, experts).view(B, T, d), balance


def expert_mix(flat: Tensor, gates: Tensor, idx: Tensor, experts: Sequence[Callable[[Tensor], Tensor]],
               skip_empty: bool = True) -> Tensor:
    """Each token's chosen experts' outputs, weighted by their gates: flat (N, d), gates and expert
    ids (N, k) -> (N, d). `skip_empty`: skip an expert no token chose (a data-dependent branch,
    which the exporters do not take; there it multiplies an empty matrix)."""
    out = torch.zeros_like(flat)
    for e, expert in enumerate(experts):
        token, slot = torch.where(idx == e)  # the tokens routed to expert e (each at most once)
        if skip_empty and token.numel() == 0:
            continue
        y = expert(flat[token]) * gates[token, slot].unsqueeze(-1)
        out = out.index_add(0, token, y.to(out.dtype))  # autocast may run the experts in lower precision
    return out


# --- sublayers ------------------------------------------------------------------------------------
def attention_sublayer(x: Tensor, layer, w_qkv: Tensor, w_proj: Tensor, cache: LayerCache | None = None,
                       pos: int = 0, rotary: bool = False) -> Tensor:
    """The attention core of `layer` (a `LayerConfig`) with its (quantized) weights: x (B, T, d) ->
    QKV projection (`rotary`: queries and keys turned by `rope`), the layer's attention kind, output
    projection. With a `cache`, x holds the tokens at positions pos .. pos+T-1 and the cache what
    attention keeps of those before."""
    B, T, _ = x.shape
    q, k, v = qkv_project(x, w_qkv, layer.n_heads)  # each (B, nh, T, hs)
    if rotary:
        q, k = rope_qk(q, k, pos)
    if cache is None:
        y = attention(layer.attention, q, k, v, layer.window)
    else:
        y = cached_attention(layer.attention, q, k, v, layer.window, cache, pos)
    return F.linear(y.transpose(1, 2).reshape(B, T, -1), w_proj)  # (B, T, nh*hs) -> (B, T, d)


def ffn_sublayer(x: Tensor, layer, w: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
    """The FFN core of `layer` with its (quantized) weights by name (up, down; gate for SwiGLU;
    router, up (E, size, d) and down (E, d, size) for MoE): (y, MoE balance loss or None)."""
    if layer.ffn == "moe":
        return moe(x, w["router"], layer.top_k, list(w["up"]), list(w["down"]))
    if layer.ffn == "swiglu":
        return swiglu(x, w["gate"], w["up"], w["down"]), None
    return mlp(x, w["up"], w["down"]), None
