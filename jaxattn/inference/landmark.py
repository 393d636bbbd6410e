"""Random-access inference for landmark models: a block cache per layer, processed in windows.

``LandmarkDecoder`` runs a ``TransformerLM`` whose layers are all landmark attention on a stream
of any length (Mohtashami & Jaggi 2023, §3.2). Tokens arrive through ``feed``; the decoder
inserts a landmark after every ``mem_freq`` of them and runs the model over a window of at most
``chunk_blocks`` blocks. Once a window is full its blocks move to the cache: per layer, the keys
before RoPE and the values of every block, and the landmark keys that queries score. Each query
of the next windows retrieves its ``top_k`` best cached blocks (``landmark_retrieval``), which
its grouped softmax gates by their landmarks alongside the window's own blocks.

With ``offload=True`` the cached keys and values live in host memory (NumPy) and only the
landmark keys, one per block, stay on the accelerator; the selected blocks are gathered on the
host and copied over for each window and layer, so the context is bounded by host RAM. The
results are identical to the device cache. The paper pairs offloading with one selection per
head for the whole chunk (``max_over_tokens``), which lets later tokens of a chunk steer the
retrieval of earlier ones; our ``max_over_tokens`` is a running max over the tokens so far, so
it stays causal and the copy holds ``top_k`` blocks per token and head like the default.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxattn.attention import landmark_retrieval as retrieval
from jaxattn.attention.landmark import RetrievedBlocks, landmark_attention
from jaxattn.attention.rope import apply_rope
from jaxattn.inference.sampling import (check_positive_int, check_token_ids,
                                        generate_by_feeding)
from jaxattn.nn.transformer import TransformerLM


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """How ``LandmarkDecoder`` reads its cache.

    top_k: blocks each query retrieves (the paper's k; 4 in its passkey runs).
    chunk_blocks: blocks per window; the paper's 250-token chunks at ``mem_freq=50`` are 5.
      A window needs ``(chunk_blocks + top_k + 1) * (mem_freq + 1)`` positions, which should
      stay within the training length.
    selection: ``"per_token_and_head"`` (default), ``"max_over_tokens"`` or
      ``"max_over_heads"`` (``landmark_retrieval.SELECTION_METHODS``).
    offload: keep cached keys and values in host memory.
    initial_capacity: cache slots allocated at first; the cache doubles when full.
    """

    top_k: int = 4
    chunk_blocks: int = 5
    selection: str = "per_token_and_head"
    offload: bool = False
    initial_capacity: int = 64

    def __post_init__(self):
        for name in ("top_k", "chunk_blocks", "initial_capacity"):
            check_positive_int(name, getattr(self, name))
        retrieval.check_selection(self.selection)
        if not isinstance(self.offload, bool):
            raise ValueError(f"offload must be a bool, got {self.offload!r}")


@dataclasses.dataclass
class LayerCache:
    """One layer's cached blocks. ``keys``/``values``: ``[B, C, block, K, D]`` (keys before
    RoPE), on device or, offloaded, NumPy on the host; ``landmarks``: ``[B, C, K, D]`` on
    device, the last key of each block."""

    keys: object
    values: object
    landmarks: jax.Array


def _check_model(model):
    if not isinstance(model, TransformerLM):
        raise ValueError(f"model must be a TransformerLM, got {type(model).__name__}")
    kinds = [spec.kind for spec in model.cfg.attention]
    if any(kind != "landmark" for kind in kinds):
        raise ValueError(f"LandmarkDecoder needs landmark attention in every layer, got "
                         f"layers {kinds}")
    if not model.cfg.landmark.causal:
        raise ValueError("LandmarkDecoder needs causal landmark attention (causal=True)")


def _project_and_select(graphdef, state, x, positions, landmarks, num_cached, num_queries, *,
                        top_k, block_size, selection):
    """Layer input -> RoPE'd window ``q, k``, raw ``k, v`` and the selected cache slots."""
    block = nnx.merge(graphdef, state)
    attn = block.attn
    q, k, v = attn.project(block.attn_norm(x))
    q_rot = apply_rope(q, positions, attn.rope_base)
    k_rot = apply_rope(k, positions, attn.rope_base)
    indices, valid = retrieval.select_blocks(
        q_rot, landmarks, num_cached, top_k=top_k, block_size=block_size, selection=selection,
        num_queries=num_queries, rope_base=attn.rope_base)
    return q_rot, k_rot, k, v, indices, valid


def _attend(graphdef, state, x, q_rot, k_rot, v, mem_keys, mem_values, indices, valid,
            num_cached, *, top_k, block_size):
    """The rest of the layer: grouped softmax over window + retrieved blocks, then the MLP."""
    block = nnx.merge(graphdef, state)
    attn = block.attn
    mem_keys = retrieval.rotate_retrieved(mem_keys, indices, num_cached, top_k=top_k,
                                          block_size=block_size, rope_base=attn.rope_base)
    ssmax_s = None if attn.ssmax_s is None else attn.ssmax_s[...]
    out = landmark_attention(q_rot, k_rot, v, block_size=block_size, causal=True,
                             softmax=attn.spec.options.softmax, ssmax_s=ssmax_s,
                             retrieved=RetrievedBlocks(mem_keys, mem_values, valid))
    x = x + attn.output(out)
    return x + block.mlp(block.mlp_norm(x))


def _embed(graphdef, state, ids):
    return nnx.merge(graphdef, state).embed(ids)


def _head(graphdef, state, x):
    model = nnx.merge(graphdef, state)
    return model.logits(model.final_norm(x))


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_slots(cache, new, start):
    return jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype), start, axis=1)


class LandmarkDecoder:
    """Feeds token streams through a landmark ``TransformerLM`` with retrieval (see module doc).

    Usage::

        decoder = LandmarkDecoder(model, RetrievalConfig(top_k=4), batch_size=1)
        logits = decoder.feed(prompt_ids[None])           # [1, len(prompt), vocab]
        new_ids = decoder.generate(max_new_tokens=10)     # greedy continuation

    The decoder holds the stream's state; ``reset()`` starts a new one.
    """

    def __init__(self, model: TransformerLM, config: RetrievalConfig = RetrievalConfig(), *,
                 batch_size: int = 1):
        _check_model(model)
        if not isinstance(config, RetrievalConfig):
            raise ValueError(f"config must be a RetrievalConfig, got {type(config).__name__}")
        check_positive_int("batch_size", batch_size)
        self.config = config
        self.batch_size = batch_size
        self.mem_freq = model.cfg.landmark.mem_freq
        self.block_size = self.mem_freq + 1
        self.window_len = config.chunk_blocks * self.block_size
        self.landmark_id = model.cfg.landmark_id
        self.vocab_size = model.cfg.vocab_size
        # Graph definitions hold the (unhashable) model config, so they are bound into the
        # jitted functions rather than passed as static arguments.
        graph, self._model_state = nnx.split(model)
        self._embed = jax.jit(functools.partial(_embed, graph))
        self._head = jax.jit(functools.partial(_head, graph))
        # Blocks of one structure (the usual case) share one pair of compiled functions.
        self._layers, compiled = [], []
        for block in model.blocks:
            block_graph, block_state = nnx.split(block)
            fns = next((f for g, f in compiled if g == block_graph), None)
            if fns is None:
                fns = (jax.jit(functools.partial(
                           _project_and_select, block_graph, top_k=config.top_k,
                           block_size=self.block_size, selection=config.selection)),
                       jax.jit(functools.partial(_attend, block_graph, top_k=config.top_k,
                                                 block_size=self.block_size)))
                compiled.append((block_graph, fns))
            self._layers.append((block_state, *fns))
        self._kv_shape = (model.cfg.num_kv_heads, model.cfg.head_dim)
        self._dtype = model.cfg.compute_dtype
        self.reset()

    def reset(self):
        """Forgets the stream: empty cache and window."""
        capacity = max(self.config.initial_capacity, self.config.top_k)
        self.num_cached = 0
        self._window = np.zeros((self.batch_size, self.window_len), np.int32)
        self._window_len = 0
        self._block_fill = 0
        self.last_logits = None
        self.num_tokens = 0  # ordinary tokens fed so far
        self._caches = [self._empty_cache(capacity) for _ in self._layers]

    @property
    def capacity(self) -> int:
        return self._caches[0].landmarks.shape[1]

    def _empty_cache(self, capacity):
        blocks = (self.batch_size, capacity, self.block_size, *self._kv_shape)
        xp = np if self.config.offload else jnp
        return LayerCache(
            keys=xp.zeros(blocks, self._dtype), values=xp.zeros(blocks, self._dtype),
            landmarks=jnp.zeros((self.batch_size, capacity, *self._kv_shape), self._dtype))

    def _grow(self, needed):
        capacity = self.capacity
        if needed <= capacity:
            return
        new_capacity = max(2 * capacity, needed)
        for cache in self._caches:
            xp = np if self.config.offload else jnp
            pad = lambda a: xp.concatenate(
                [a, xp.zeros((a.shape[0], new_capacity - capacity, *a.shape[2:]), a.dtype)],
                axis=1)
            cache.keys, cache.values = pad(cache.keys), pad(cache.values)
            cache.landmarks = jnp.concatenate(
                [cache.landmarks, jnp.zeros((self.batch_size, new_capacity - capacity,
                                             *self._kv_shape), cache.landmarks.dtype)], axis=1)

    def _gather(self, cache, indices):
        heads = indices.shape[2]
        if self.config.offload:
            indices = np.asarray(indices)
            return (jnp.asarray(retrieval.gather_blocks_host(cache.keys, indices, heads=heads)),
                    jnp.asarray(retrieval.gather_blocks_host(cache.values, indices, heads=heads)))
        return (retrieval.gather_blocks(cache.keys, indices, heads=heads),
                retrieval.gather_blocks(cache.values, indices, heads=heads))

    def _run_window(self, commit):
        """Runs the current window; returns its logits ``[B, window_len, vocab]``; with
        ``commit`` moves its blocks to the cache and empties it."""
        cfg = self.config
        ids = jnp.asarray(self._window)
        start = int(retrieval.window_start(self.num_cached, cfg.top_k, self.block_size))
        positions = jnp.broadcast_to(start + jnp.arange(self.window_len, dtype=jnp.int32),
                                     ids.shape)
        x = self._embed(self._model_state, ids)
        num_cached = jnp.asarray(self.num_cached, jnp.int32)
        num_queries = jnp.asarray(self._window_len, jnp.int32)
        new_blocks = []
        for (state, select, attend), cache in zip(self._layers, self._caches):
            q_rot, k_rot, k, v, indices, valid = select(
                state, x, positions, cache.landmarks, num_cached, num_queries)
            mem_keys, mem_values = self._gather(cache, indices)
            x = attend(state, x, q_rot, k_rot, v, mem_keys, mem_values, indices, valid,
                       num_cached)
            new_blocks.append((k, v))
        logits = self._head(self._model_state, x)
        if commit:
            self._commit(new_blocks)
        return logits

    def _commit(self, new_blocks):
        count = self.window_len // self.block_size
        self._grow(self.num_cached + count)
        shape = (self.batch_size, count, self.block_size, *self._kv_shape)
        for cache, (k, v) in zip(self._caches, new_blocks):
            k, v = k.reshape(shape), v.reshape(shape)
            if self.config.offload:
                stop = self.num_cached + count
                cache.keys[:, self.num_cached:stop] = np.asarray(k)
                cache.values[:, self.num_cached:stop] = np.asarray(v)
            else:
                cache.keys = _write_slots(cache.keys, k, self.num_cached)
                cache.values = _write_slots(cache.values, v, self.num_cached)
            cache.landmarks = _write_slots(cache.landmarks, k[:, :, -1], self.num_cached)
        self.num_cached += count
        self._window[:] = 0
        self._window_len = 0

    def _append(self, column):
        self._window[:, self._window_len] = column
        self._window_len += 1

    def feed(self, tokens) -> np.ndarray:
        """Appends ordinary tokens ``[B, n]`` to the stream; returns their next-token logits
        ``[B, n, vocab]`` (float32, NumPy)."""
        tokens = check_token_ids(tokens, self.batch_size, self.vocab_size)
        results, wanted = [], []
        for column in tokens.T:
            if self._block_fill == self.mem_freq:
                self._append(self.landmark_id)
                self._block_fill = 0
                if self._window_len == self.window_len:
                    logits = self._run_window(commit=True)
                    if wanted:
                        results.append(np.asarray(logits[:, wanted]))
                    wanted = []
            wanted.append(self._window_len)
            self._append(column)
            self._block_fill += 1
            self.num_tokens += 1
        if wanted:
            logits = self._run_window(commit=False)
            results.append(np.asarray(logits[:, wanted]))
        if not results:
            return np.zeros((self.batch_size, 0, self.vocab_size), np.float32)
        out = np.concatenate(results, axis=1)
        self.last_logits = out[:, -1]
        return out

    def generate(self, max_new_tokens: int, *, prompt=None, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0) -> np.ndarray:
        """Continuation ``[B, max_new_tokens]`` of the stream (after feeding ``prompt``
        ``[B, n]`` if given): greedy at ``temperature=0``, else sampled with
        ``temperature`` and ``top_k`` from ``seed`` (``jaxattn.inference.sampling``)."""
        return generate_by_feeding(self, max_new_tokens, prompt=prompt,
                                   temperature=temperature, top_k=top_k, seed=seed)

    def device_cache_bytes(self) -> int:
        """Bytes of cache held on the accelerator (landmark keys, plus blocks unless offloaded)."""
        total = 0
        for cache in self._caches:
            total += cache.landmarks.nbytes
            if not self.config.offload:
                total += cache.keys.nbytes + cache.values.nbytes
        return total

    def cache_bytes(self) -> int:
        """Bytes of cache, on the accelerator and on the host together."""
        return self.device_cache_bytes() + self.host_cache_bytes()

    def host_cache_bytes(self) -> int:
        """Bytes of cache held in host memory (the offloaded blocks)."""
        if not self.config.offload:
            return 0
        return sum(cache.keys.nbytes + cache.values.nbytes for cache in self._caches)
