"""A small pre-LayerNorm Transformer LM whose behaviour is set by the attention mask (posts 6933, 4765).

**Model.** ``TransformerLM(vocab_size, num_layers, num_heads, head_dim, mlp_dim, max_len)``:
token embedding (``d_model = num_heads * head_dim``) plus fixed sinusoidal positions, then
``num_layers`` pre-LN blocks ``x + MHA(LN(x))``, ``x + MLP(LN(x))`` (MLP: Dense ``mlp_dim``,
gelu, Dense ``d_model``), a final LayerNorm and an **untied** output projection (Dense with
bias) to ``vocab_size`` logits.

* Positions: the author's layout (post 4765), **concatenated** ``[cos | sin]`` (not
  interleaved) with frequencies ``1 / 10000^(2i / d_model)``, ``i < d_model / 2``; added to
  the token embedding. ``d_model`` must be even.
* Attention: separate q, k, v projections ``[d_model] -> [H, D]`` (with bias) and an output
  projection, computed by :func:`kernels.attention.masked_attention` (``impl="xla"``).
  ``scale_attention=False`` passes ``scale=1.0``: the author's 2018 layer before 1/sqrt(d)
  was added.
* ``__call__(tokens [B, T], mask=None) -> logits [B, T, V]`` with any boolean mask
  broadcastable to ``[B, 1, T, T]``: :func:`~kernels.attention.causal_mask` (LM),
  :func:`~kernels.attention.unilm_mask` (seq2seq), :func:`~kernels.attention.permutation_mask`
  (permutation LM); ``None`` = full bidirectional attention. ``T > max_len`` raises
  ``ValueError`` (shapes are static, so this is checked at trace time too).

**KV cache.** ``cache = {"k": (k_0, ..., k_{L-1}), "v": (v_0, ...)}``: a *tuple per layer*
(not a stacked array) of ``[B, max_len, H, D]`` float32 arrays, so every leaf has a leading
batch axis as :func:`zoo.seq2seq.beam_search` requires. :meth:`TransformerLM.init_cache` gives
zeros; :meth:`TransformerLM.decode_step` ``(tokens_t [B], position, cache)`` writes the new key
and value at ``position`` with ``lax.dynamic_update_slice`` and attends to the keys at
positions ``<= position`` (a mask from a position iota, so one compilation serves every
step); :meth:`TransformerLM.prefill` ``(tokens [B, P])`` runs the full causal pass and returns
``(logits, cache)`` with positions ``< P`` filled (``>= P`` zero). The cache is only valid for
the causal (LM) mask. A traced ``position >= max_len`` cannot be checked: XLA clamps the
update index, so the result is silently wrong; the helpers below check the buffer length
against ``max_len`` statically.

**Decoder step functions** (``zoo.seq2seq.decoding`` convention
``logits_fn(tokens [B, L], step, cache) -> (logits [B, V], cache)``):

* :func:`make_recompute_logits_fn`: ignores the cache (pass ``cache=None``) and reruns the
  whole buffer with the causal mask each step, O(L²) per step, as the author decodes.
* :func:`make_cached_logits_fn`: feeds ``tokens[:, step]`` at ``position = step`` through
  ``decode_step``; pass ``cache = cached_prefill(model, params, prompt)``, the cache after
  ``prompt[:, :P - 1]`` (the decoders' first call has ``step = P - 1``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from kernels.attention import causal_mask, masked_attention


def sinusoidal_positions(max_len: int, d_model: int) -> np.ndarray:
    """``[max_len, d_model]`` float32: ``[cos(p·ω_i) | sin(p·ω_i)]``, ``ω_i = 10000^(-2i/d)``."""
    if d_model % 2:
        raise ValueError(f"sinusoidal_positions: d_model must be even; got {d_model}")
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    omega = 1.0 / 10000.0 ** (2.0 * np.arange(d_model // 2, dtype=np.float64) / d_model)
    angles = pos * omega[None, :]
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=-1).astype(np.float32)


class Block(nn.Module):
    """Pre-LN Transformer block: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``."""

    num_heads: int
    head_dim: int
    mlp_dim: int
    scale_attention: bool = True

    def setup(self):
        hd = (self.num_heads, self.head_dim)
        self.ln_attn = nn.LayerNorm(epsilon=1e-6)
        self.query = nn.DenseGeneral(hd)
        self.key = nn.DenseGeneral(hd)
        self.value = nn.DenseGeneral(hd)
        self.out = nn.DenseGeneral(self.num_heads * self.head_dim, axis=(-2, -1))
        self.ln_mlp = nn.LayerNorm(epsilon=1e-6)
        self.mlp_in = nn.Dense(self.mlp_dim)
        self.mlp_out = nn.Dense(self.num_heads * self.head_dim)

    def _scale(self):
        return None if self.scale_attention else 1.0  # None = 1/sqrt(head_dim)

    def _mlp(self, x):
        return x + self.mlp_out(nn.gelu(self.mlp_in(self.ln_mlp(x))))

    def __call__(self, x, mask=None, return_kv=False):
        """``x [B, T, d] -> [B, T, d]`` (and ``(k, v)`` each ``[B, T, H, D]`` when ``return_kv``)."""
        h = self.ln_attn(x)
        q, k, v = self.query(h), self.key(h), self.value(h)
        att = masked_attention(q, k, v, mask=mask, scale=self._scale(), impl="xla")
        y = self._mlp(x + self.out(att))
        return (y, (k, v)) if return_kv else y

    def step(self, x, position, k_cache, v_cache):
        """One token: ``x [B, 1, d]`` at ``position``; caches ``[B, max_len, H, D]``."""
        h = self.ln_attn(x)
        q, k, v = self.query(h), self.key(h), self.value(h)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, position, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, position, 0, 0))
        visible = (jnp.arange(k_cache.shape[1]) <= position)[None, None, None, :]  # [1, 1, 1, max_len]
        att = masked_attention(q, k_cache, v_cache, mask=visible, scale=self._scale(), impl="xla")
        return self._mlp(x + self.out(att)), k_cache, v_cache


class TransformerLM(nn.Module):
    """Decoder-style Transformer whose mask decides LM / UniLM seq2seq / permutation LM.

    See the module docstring for the architecture, position layout and cache layout.
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    max_len: int
    scale_attention: bool = True

    @property
    def d_model(self) -> int:
        return self.num_heads * self.head_dim

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.d_model)
        self.blocks = [
            Block(self.num_heads, self.head_dim, self.mlp_dim, self.scale_attention, name=f"block_{i}")
            for i in range(self.num_layers)
        ]
        self.ln_final = nn.LayerNorm(epsilon=1e-6)
        self.head = nn.Dense(self.vocab_size)

    def _positions(self):
        return jnp.asarray(sinusoidal_positions(self.max_len, self.d_model))

    def _check_len(self, fn, t):
        if t > self.max_len:
            raise ValueError(f"TransformerLM.{fn}: sequence length {t} exceeds max_len = {self.max_len}")

    def _embed(self, tokens):
        t = tokens.shape[1]
        return self.embed(tokens) + self._positions()[None, :t]

    def _logits(self, x):
        return self.head(self.ln_final(x))

    def __call__(self, tokens, mask=None):
        """``tokens [B, T]`` int, ``mask`` bool broadcastable to ``[B, 1, T, T]`` -> ``[B, T, V]``."""
        if jnp.ndim(tokens) != 2:
            raise ValueError(f"TransformerLM: tokens must be [B, T]; got shape {jnp.shape(tokens)}")
        self._check_len("__call__", tokens.shape[1])
        x = self._embed(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self._logits(x)

    def prefill(self, tokens):
        """Causal pass over ``tokens [B, P]``: ``(logits [B, P, V], cache)``, cache filled at ``< P``."""
        b, p = tokens.shape
        self._check_len("prefill", p)
        x = self._embed(tokens)
        mask = causal_mask(p)
        ks, vs = [], []
        pad = ((0, 0), (0, self.max_len - p), (0, 0), (0, 0))
        for block in self.blocks:
            x, (k, v) = block(x, mask, return_kv=True)
            ks.append(jnp.pad(k.astype(jnp.float32), pad))
            vs.append(jnp.pad(v.astype(jnp.float32), pad))
        return self._logits(x), {"k": tuple(ks), "v": tuple(vs)}

    def decode_step(self, tokens_t, position, cache):
        """``tokens_t [B]`` at ``position`` (int32 scalar, may be traced) -> ``(logits [B, V], cache)``."""
        x = self.embed(tokens_t)[:, None, :] + self._positions()[position][None, None, :]
        ks, vs = [], []
        for block, kc, vc in zip(self.blocks, cache["k"], cache["v"]):
            x, kc, vc = block.step(x, position, kc, vc)
            ks.append(kc)
            vs.append(vc)
        return self._logits(x)[:, 0], {"k": tuple(ks), "v": tuple(vs)}

    def init_cache(self, batch: int, dtype=jnp.float32):
        """Zero cache: ``{"k": L × [batch, max_len, H, D], "v": same}`` (needs no params)."""
        z = lambda: jnp.zeros((batch, self.max_len, self.num_heads, self.head_dim), dtype)  # noqa: E731
        return {"k": tuple(z() for _ in range(self.num_layers)), "v": tuple(z() for _ in range(self.num_layers))}


# --------------------------------------------------------------------------- #
# Decoder step functions (zoo.seq2seq.decoding interface)
# --------------------------------------------------------------------------- #


def _check_buffer(model, fn, tokens):
    if jnp.ndim(tokens) != 2:
        raise ValueError(f"{fn}: tokens must be [B, L]; got shape {jnp.shape(tokens)}")
    if tokens.shape[1] > model.max_len:
        raise ValueError(f"{fn}: token buffer length {tokens.shape[1]} (prompt + max_new_tokens) "
                         f"exceeds max_len = {model.max_len}")


def make_recompute_logits_fn(model: TransformerLM, params):
    """``logits_fn`` that reruns the whole buffer under the causal mask; the cache passes through."""

    def logits_fn(tokens, step, cache):
        _check_buffer(model, "recompute logits_fn", tokens)
        logits = model.apply(params, tokens, causal_mask(tokens.shape[1]))
        return jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False), cache

    return logits_fn


def make_cached_logits_fn(model: TransformerLM, params):
    """``logits_fn`` that feeds ``tokens[:, step]`` at ``position = step`` through the KV cache."""

    def logits_fn(tokens, step, cache):
        _check_buffer(model, "cached logits_fn", tokens)
        tok = jax.lax.dynamic_index_in_dim(tokens, step, axis=1, keepdims=False)
        return model.apply(params, tok, step, cache, method=TransformerLM.decode_step)

    return logits_fn


def cached_prefill(model: TransformerLM, params, prompt):
    """The cache after ``prompt[:, :P - 1]`` (what the decoders expect with the cached logits_fn)."""
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"cached_prefill: prompt must be [B, P] with P >= 1; got shape {prompt.shape}")
    b, p = prompt.shape
    if p > model.max_len:
        raise ValueError(f"cached_prefill: prompt length {p} exceeds max_len = {model.max_len}")
    if p == 1:
        return model.init_cache(b)
    _, cache = model.apply(params, prompt[:, : p - 1], method=TransformerLM.prefill)
    return cache
