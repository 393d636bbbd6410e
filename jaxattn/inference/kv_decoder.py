"""KV-cache decoding for models whose layers are dense, SSMax, local, LSG or causal routing
attention.

``KVCacheDecoder`` keeps one ``KVCache`` per layer (``jaxattn.attention.kv_cache``) with room
for ``capacity`` tokens, and runs tokens through ``TransformerLM.decode_chunk``: a prompt in
chunks of ``prefill_chunk`` tokens (chunked prefill), then one token per step. Two chunk
shapes are compiled, ``prefill_chunk`` and 1 (``generate`` adds its one-token sampling step):
a piece of ``1 < r < prefill_chunk`` tokens is padded to ``prefill_chunk`` and the caches
advance by ``r`` only, so the padding's slots are overwritten by the next chunk and no real
token ever sees them (every kind here is causal).
Feeding a sequence in any pieces gives the full forward's logits (up to float rounding).

LSG global tokens are run once per stream (``reset``) and sit in the first slots of every
layer's cache. Routing layers also cache each slot's cluster (their centroids are read, never
updated); with ``cluster_size=None`` their window is ``train_len // num_clusters``, so the
logits are the full forward's at any length with that window (``train_len`` itself).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxattn.attention.kv_cache import cache_nbytes
from jaxattn.inference.sampling import (check_positive_int, check_sampling,
                                        check_token_ids, sample_logits, step_key)
from jaxattn.nn.transformer import TransformerLM


SLOT_MULTIPLE = 128


def _init(graphdef, params, batch, slots):
    return nnx.merge(graphdef, params).init_kv_cache(batch, slots)


def _decode(graphdef, params, caches, tokens, num_valid):
    return nnx.merge(graphdef, params).decode_chunk(tokens, caches, num_valid=num_valid)


def _step(graphdef, params, caches, last_logits, key, step, temperature, *, top_k):
    """Samples the next token from ``last_logits [B, vocab]`` and runs it through the model."""
    token = sample_logits(last_logits, step_key(key, step), temperature=temperature,
                          top_k=top_k)
    logits, caches = nnx.merge(graphdef, params).decode_chunk(token[:, None], caches)
    return token, logits[:, 0], caches


class KVCacheDecoder:
    """Feeds token streams through a ``TransformerLM`` with per-layer KV caches.

    Usage::

        decoder = KVCacheDecoder(model, batch_size=1, capacity=4096)
        logits = decoder.feed(prompt_ids[None])      # [1, len(prompt), vocab]
        new_ids = decoder.generate(50, temperature=0.8, top_k=40, seed=0)   # [1, 50]
        decoder.reset()                              # a new stream

    Args:
      model: a ``TransformerLM`` whose every layer is causal dense, ssmax, local, LSG or
        routing (argmax assignment) attention (``model.check_kv_cache()``).
      batch_size: rows of every ``feed``.
      capacity: tokens a stream may hold (prompt and generated tokens together).
      prefill_chunk: tokens per prefill call (at most ``capacity``); each call attends over
        the whole cache, so its memory is ``O(prefill_chunk * capacity)`` per layer.
    """

    def __init__(self, model: TransformerLM, *, batch_size: int = 1, capacity: int,
                 prefill_chunk: int = 256):
        if not isinstance(model, TransformerLM):
            raise ValueError(f"model must be a TransformerLM, got {type(model).__name__}")
        model.check_kv_cache()
        check_positive_int("batch_size", batch_size)
        check_positive_int("capacity", capacity)
        check_positive_int("prefill_chunk", prefill_chunk)
        self.batch_size = batch_size
        self.capacity = capacity
        self.prefill_chunk = min(prefill_chunk, capacity)
        self.vocab_size = model.cfg.vocab_size
        self.num_global_tokens = model.cfg.num_global_tokens
        # Slack for a padded last chunk, whose write must not run past the arrays; the
        # slots of a layer (global tokens included) rounded up to a multiple of
        # SLOT_MULTIPLE, a size matrix kernels handle without ragged tiles.
        needed = self.num_global_tokens + capacity + self.prefill_chunk - 1
        self._slots = -(-needed // SLOT_MULTIPLE) * SLOT_MULTIPLE - self.num_global_tokens
        graphdef, self._params = nnx.split(model)
        self._init = jax.jit(functools.partial(_init, graphdef), static_argnums=(1, 2))
        self._decode = jax.jit(functools.partial(_decode, graphdef), donate_argnums=(1,))
        self._step = jax.jit(functools.partial(_step, graphdef), donate_argnums=(1,),
                             static_argnames=("top_k",))
        self.reset()

    def reset(self):
        """Starts a new stream: empty caches (LSG global tokens already in)."""
        self._caches = self._init(self._params, self.batch_size, self._slots)
        self._last_logits = None
        self.num_tokens = 0  # ordinary tokens in the caches

    def cache_bytes(self) -> int:
        """Bytes of the caches on the accelerator (fixed by ``capacity``, not the stream)."""
        return cache_nbytes(self._caches)

    def _check_tokens(self, tokens):
        tokens = check_token_ids(tokens, self.batch_size, self.vocab_size)
        if self.num_tokens + tokens.shape[1] > self.capacity:
            raise ValueError(f"tokens: {tokens.shape[1]} more tokens overflow the cache "
                             f"(capacity={self.capacity}, {self.num_tokens} held); create the "
                             f"decoder with a larger capacity or reset() it")
        return tokens

    def _run(self, tokens, keep):
        """Runs ``tokens [B, n]`` through the caches; returns their logits (device arrays)
        when ``keep``, and remembers the last position's."""
        pieces, pos, n = [], 0, tokens.shape[1]
        while pos < n:
            real = min(self.prefill_chunk, n - pos)
            size = 1 if real == 1 else self.prefill_chunk
            chunk = np.zeros((self.batch_size, size), np.int32)
            chunk[:, :real] = tokens[:, pos:pos + real]
            logits, self._caches = self._decode(self._params, self._caches, jnp.asarray(chunk),
                                                jnp.asarray(real, jnp.int32))
            if keep:
                pieces.append(logits[:, :real])
            self._last_logits = logits[:, real - 1]
            self.num_tokens += real
            pos += real
        return pieces

    def feed(self, tokens) -> np.ndarray:
        """Appends ``tokens [batch_size, n]`` (int ids, any ``n >= 0``) to the stream; returns
        their next-token logits ``[batch_size, n, vocab]`` (float32, NumPy)."""
        tokens = self._check_tokens(tokens)
        if tokens.shape[1] == 0:
            return np.zeros((self.batch_size, 0, self.vocab_size), np.float32)
        pieces = self._run(tokens, keep=True)
        return np.concatenate([np.asarray(p) for p in pieces], axis=1)

    def generate(self, max_new_tokens: int, *, prompt=None, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0) -> np.ndarray:
        """Continuation ``[batch_size, max_new_tokens]`` of the stream (after feeding
        ``prompt [batch_size, n]`` if given); the new tokens join the stream.

        ``temperature=0`` is greedy; otherwise tokens are drawn from ``softmax(logits /
        temperature)`` over the ``top_k`` largest logits (``jaxattn.inference.sampling``),
        deterministically for a given ``seed``.
        """
        check_positive_int("max_new_tokens", max_new_tokens)
        check_sampling(temperature, top_k, seed)
        if prompt is not None:
            prompt = self._check_tokens(prompt)
        held = self.num_tokens + (0 if prompt is None else prompt.shape[1])
        if held + max_new_tokens > self.capacity:
            raise ValueError(f"max_new_tokens: {max_new_tokens} new tokens after {held} overflow "
                             f"the cache (capacity={self.capacity}); create the decoder with a "
                             f"larger capacity")
        if prompt is not None and prompt.shape[1]:
            self._run(prompt, keep=False)
        if self._last_logits is None:
            raise ValueError("nothing to continue: feed a prompt first")
        key = jax.random.PRNGKey(seed)
        temperature = jnp.asarray(temperature, jnp.float32)
        out = []
        for step in range(max_new_tokens):
            token, self._last_logits, self._caches = self._step(
                self._params, self._caches, self._last_logits, key,
                jnp.asarray(step, jnp.int32), temperature, top_k=top_k)
            out.append(token)
            self.num_tokens += 1
        return np.asarray(jnp.stack(out, axis=1))
