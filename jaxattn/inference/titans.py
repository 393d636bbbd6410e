"""Streaming inference for Titans language models: constant memory for a stream of any length.

``TitansStream`` runs a ``TransformerLM`` whose layers are Titans blocks (``cfg.titans``) over
a token stream fed in pieces of any length. It holds the model's stream state (every layer's
neural memory, momentum, convolution history and, for MAG and MAL, the sliding-window cache;
see ``TransformerLM.stream``), whose size does not depend on how many tokens were seen.

The layers take whole pieces of ``cfg.titans.multiple`` tokens (MAC's ``segment_len``, else
``chunk_size``). ``feed`` commits every whole piece to the state (in calls of at most
``max_piece_len`` tokens) and keeps the rest pending; the logits of the pending tokens come
from a call on them padded to one piece whose state is thrown away, which is exact because
every layer is causal: a token's logits never depend on the padding after it. The pending
tokens are committed with the next whole piece, so the logits of a stream do not depend on
how it was cut into ``feed`` calls (up to float rounding between differently shaped calls).

The stream is one document: the memory carries everything fed since the last ``reset``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxattn.inference.sampling import (check_positive_int, check_token_ids,
                                        generate_by_feeding)
from jaxattn.nn.transformer import TransformerLM


def _run(graphdef, params, tokens, state):
    return nnx.merge(graphdef, params).stream(tokens, state)


def _init(graphdef, params, batch):
    return nnx.merge(graphdef, params).init_stream_state(batch)


class TitansStream:
    """Feeds a token stream through a Titans ``TransformerLM`` (see module docstring).

    Usage::

        stream = TitansStream(model, batch_size=1)
        logits = stream.feed(prompt_ids[None])        # [1, len(prompt), vocab]
        new_ids = stream.generate(max_new_tokens=20)  # greedy continuation [1, 20]
        stream.state_bytes()                          # the same after 1k or 1M tokens
        stream.reset()                                # a new document

    Args:
      model: a ``TransformerLM`` with ``cfg.titans`` set.
      batch_size: rows of every ``feed``.
      max_piece_len: the longest call committed at once (rounded down to a multiple of
        ``cfg.titans.multiple``, at least one); longer feeds are cut into such calls, so at
        most two call shapes are compiled (this and one piece).
    """

    def __init__(self, model: TransformerLM, *, batch_size: int = 1, max_piece_len: int = 512):
        if not isinstance(model, TransformerLM):
            raise ValueError(f"model must be a TransformerLM, got {type(model).__name__}")
        if model.cfg.titans is None:
            raise ValueError("TitansStream needs a TransformerLM with Titans layers "
                             "(TransformerConfig.titans / config.model.titans.arch)")
        check_positive_int("batch_size", batch_size)
        check_positive_int("max_piece_len", max_piece_len)
        self.batch_size = batch_size
        self.multiple = model.cfg.titans.multiple
        self.piece_len = self.multiple * max(1, max_piece_len // self.multiple)
        self.vocab_size = model.cfg.vocab_size
        graphdef, self._params = nnx.split(model)
        self._run = jax.jit(functools.partial(_run, graphdef))
        self._init = jax.jit(functools.partial(_init, graphdef), static_argnums=1)
        self.reset()

    def reset(self):
        """Starts a new stream: the learned initial memory, empty caches, nothing pending."""
        self.state = self._init(self._params, self.batch_size)
        self._pending = np.zeros((self.batch_size, 0), np.int32)
        self.last_logits = None
        self.num_tokens = 0  # tokens fed since the last reset

    @property
    def num_committed(self) -> int:
        """Tokens already written into ``state`` (a multiple of ``multiple``)."""
        return self.num_tokens - self._pending.shape[1]

    def state_bytes(self) -> int:
        """Bytes of the stream state: fixed by the model and batch size, not the stream."""
        return sum(leaf.nbytes for leaf in jax.tree.leaves(self.state))

    def cache_bytes(self) -> int:
        """``state_bytes()``: the decoder interface's name for the stream's memory."""
        return self.state_bytes()

    def feed(self, tokens) -> np.ndarray:
        """Appends ``tokens [batch_size, n]`` (int ids, any ``n >= 0``) to the stream; returns
        their next-token logits ``[batch_size, n, vocab]`` (float32, NumPy)."""
        tokens = check_token_ids(tokens, self.batch_size, self.vocab_size)
        n = tokens.shape[1]
        if n == 0:
            return np.zeros((self.batch_size, 0, self.vocab_size), np.float32)
        skip = self._pending.shape[1]  # already returned for these
        buf = np.concatenate([self._pending, tokens.astype(np.int32)], axis=1)
        whole = buf.shape[1] // self.multiple * self.multiple
        results, pos = [], 0
        while pos < whole:
            size = self.piece_len if whole - pos >= self.piece_len else self.multiple
            logits, self.state = self._run(self._params, jnp.asarray(buf[:, pos:pos + size]),
                                           self.state)
            lo = max(skip - pos, 0)
            if lo < size:
                results.append(np.asarray(logits[:, lo:]))
            pos += size
        rest = buf[:, whole:]
        if rest.shape[1]:
            padded = np.zeros((self.batch_size, self.multiple), np.int32)
            padded[:, :rest.shape[1]] = rest
            logits, _ = self._run(self._params, jnp.asarray(padded), self.state)
            lo = max(skip - whole, 0)
            results.append(np.asarray(logits[:, lo:rest.shape[1]]))
        self._pending = rest
        self.num_tokens += n
        out = np.concatenate(results, axis=1)
        self.last_logits = out[:, -1]
        return out

    def generate(self, max_new_tokens: int, *, prompt=None, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0) -> np.ndarray:
        """Continuation ``[batch_size, max_new_tokens]`` of the stream (after feeding
        ``prompt [batch_size, n]`` if given); the generated tokens join the stream. Greedy at
        ``temperature=0``, else sampled with ``temperature`` and ``top_k`` from ``seed``
        (``jaxattn.inference.sampling``)."""
        return generate_by_feeding(self, max_new_tokens, prompt=prompt,
                                   temperature=temperature, top_k=top_k, seed=seed)
