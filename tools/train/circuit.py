"""Starts a Llama model with an induction circuit written into its first two layers.

Two CPU cores cannot wait for retrieval to emerge (README.md: runs of 20 minutes stay at the
"copy any value of the context" shortcut), so `train.py --init circuit` begins where such a run would
hope to end: layer 0 holds a previous-token head, layer 1 two heads that find the earlier position
whose previous token is the current token and copy the token there into the output. Everything is
trained afterwards; the circuit is only the starting point, like an initialisation that mimics the
attention patterns of trained models.

Residual stream layout at the start (hidden size d):
  [0, A)        token identity: the embedding of every token, random, norm about 1
  A             a constant 1 in every embedding, which lets a head attend by position alone
  [A + 1, d)    the identity of the previous token, written by layer 0
with A = (d - 1) // 2 + 1. Every other residual branch (the other heads' outputs, every MLP's down
projection, every layer after the second) starts at zero, so the stream carries exactly the circuit;
training opens them.

RoPE: the previous-token head uses the fastest-turning frequency pairs, whose rotations peak together
at a distance of one token; the matching heads use the slowest pairs, which turn by less than a radian
over `reach` tokens, so a match scores alike wherever the needle is. That needs a large rope_theta
(1e6 here) and a head dimension of 128.
"""

from __future__ import annotations

import math

import torch

POSITION_PAIRS = 12      # fastest RoPE pairs used by the previous-token head
POSITION_LOGIT = 6.0     # attention logit per pair at distance one; neighbours score 1.35x less
MATCH_LOGIT = 30.0       # attention logit of an exact match in a matching head
COPY_GAIN = 2.0          # weight of the copied token against the current token in the output


def _lowest_pair(theta: float, half: int, reach: int) -> int:
    """The first RoPE pair index whose frequency turns by at most one radian over `reach` tokens."""
    return math.ceil(half * math.log(reach) / math.log(theta))


def _head_views(att, cfg):
    """The projections of one attention layer seen per head: q [heads, head_dim, d], k and v
    [kv heads, head_dim, d], o [d, heads, head_dim]; writing into a view writes the weight."""
    d, hd = cfg.hidden_size, cfg.head_dim
    return (att.q_proj.weight.view(cfg.num_attention_heads, hd, d),
            att.k_proj.weight.view(cfg.num_key_value_heads, hd, d),
            att.v_proj.weight.view(cfg.num_key_value_heads, hd, d),
            att.o_proj.weight.view(d, cfg.num_attention_heads, hd))


@torch.no_grad()
def write_induction_circuit(model, reach: int, generator: torch.Generator) -> None:
    cfg = model.config
    d, hd = cfg.hidden_size, cfg.head_dim
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    theta = cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else cfg.rope_theta
    half = hd // 2
    low = _lowest_pair(theta, half, reach)
    if cfg.num_hidden_layers < 2 or n_kv < 2 or n_heads % n_kv or low >= half or POSITION_PAIRS > low:
        raise ValueError(f"the circuit needs 2+ layers, 2+ KV heads and RoPE pairs slow enough for {reach} tokens "
                         f"(layers {cfg.num_hidden_layers}, kv heads {n_kv}, head_dim {hd}, rope_theta {theta})")
    group = n_heads // n_kv
    a = (d - 1) // 2 + 1            # token identity dims [0, a), the constant at a, previous token after it
    b = d - a - 1                   # previous-token dims [a + 1, d)
    ones = a                        # index of the constant

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    emb = model.model.embed_tokens.weight
    emb.zero_()
    emb[:, :a] = rand(emb.shape[0], a) / math.sqrt(a)
    emb[:, ones] = 1.0

    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
    model.model.norm.weight.fill_(1.0)

    # The scale of a normalised stream: RMSNorm maps a row of squared norm n to norm sqrt(d).
    def norm_scale(squared_norm: float) -> float:
        return math.sqrt(d / squared_norm)

    s0 = norm_scale(2.0)            # layer 0 sees token identity (norm 1) and the constant 1
    s1 = norm_scale(3.0)            # layer 1 also sees the previous token (norm about 1)
    attn_scale = math.sqrt(hd)      # undo the 1/sqrt(head_dim) of the attention logits
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) / half)

    # Layer 0, query head 0 over KV head 0: attend to the previous token, copy its identity.
    q, k, v, o = _head_views(model.model.layers[0].self_attn, cfg)
    for w in (q[0], k[0], v[0]):
        w.zero_()
    amp = math.sqrt(POSITION_LOGIT * attn_scale) / s0
    for i in range(POSITION_PAIRS):
        # key (amp, 0), query amp * e^{-i theta}: the score amp^2 cos(theta (distance - 1)) peaks at 1
        k[0, i, ones] = amp
        q[0, i, ones] = amp * math.cos(freqs[i].item())
        q[0, i + half, ones] = -amp * math.sin(freqs[i].item())
    width = min(b, hd)
    v[0, :width, :width] = torch.eye(width)
    o[a + 1:a + 1 + width, 0, :width] = torch.eye(width) / s0

    # Layer 1, the first query head of KV heads 0 and 1: match the current token against the previous
    # token stored at each position, through a random projection onto the slow pairs, and copy.
    q, k, v, o = _head_views(model.model.layers[1].self_attn, cfg)
    slow = list(range(low, half)) + list(range(low + half, hd))   # both halves of each slow pair
    match = math.sqrt(MATCH_LOGIT * attn_scale * b / len(slow)) / s1
    for kv in range(2):
        head = kv * group
        proj = torch.linalg.qr(rand(b, len(slow)))[0].T        # [len(slow), b], orthonormal rows
        for w in (q[head], k[kv], v[kv]):
            w.zero_()
        q[head][slow, :b] = proj * match
        k[kv][slow, a + 1:] = proj * match
        width = min(a, hd)
        v[kv, :width, :width] = torch.eye(width)
        o[:width, head, :width] = torch.eye(width) * COPY_GAIN / s1
