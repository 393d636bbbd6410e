"""Next-token choice shared by every decoder: greedy, or temperature and top-k sampling (and
the decoders' shared argument checks and host generation loop).

``sample_logits(logits, key, temperature=T, top_k=k)`` picks one token per row of
``logits [B, vocab]``: the argmax when ``T == 0``; otherwise a draw from
``softmax(logits / T)`` restricted to the ``k`` largest logits (all of them when ``k`` is
``None``). Step ``i`` of a generation uses the key ``step_key(seed, i)``, so a generation is
a deterministic function of the seed and the logits, whichever decoder produced them; the
rows of a batch draw independently.
"""

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def check_sampling(temperature, top_k, seed) -> None:
    """``ValueError`` naming the first bad argument: ``temperature`` a finite number >= 0,
    ``top_k`` ``None`` or an int >= 1, ``seed`` an int >= 0."""
    if (not isinstance(temperature, numbers.Real) or isinstance(temperature, bool)
            or not np.isfinite(temperature) or temperature < 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got "
                         f"{temperature!r}")
    if top_k is not None and (not isinstance(top_k, numbers.Integral)
                              or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def step_key(seed, step) -> jax.Array:
    """The PRNG key of generation step ``step`` (int or int32 scalar) for ``seed`` (an int,
    or the key ``jax.random.PRNGKey(seed)`` itself)."""
    key = jax.random.PRNGKey(seed) if isinstance(seed, numbers.Integral) else seed
    return jax.random.fold_in(key, step)


def sample_logits(logits: jax.Array, key: jax.Array, *, temperature=0.0,
                  top_k: int | None = None) -> jax.Array:
    """One token per row of ``logits [B, vocab]`` -> int32 ``[B]`` (module doc).

    ``temperature`` may be traced (``0`` selects the argmax); ``top_k`` is static.
    """
    logits = jnp.asarray(logits, jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    temperature = jnp.asarray(temperature, jnp.float32)
    safe = jnp.where(temperature > 0, temperature, 1.0)
    vocab = logits.shape[-1]
    if top_k is not None and top_k < vocab:
        values, indices = jax.lax.top_k(logits, top_k)
        choice = jax.random.categorical(key, values / safe, axis=-1)
        sampled = jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0]
    else:
        sampled = jax.random.categorical(key, logits / safe, axis=-1)
    return jnp.where(temperature > 0, sampled.astype(jnp.int32), greedy)


@functools.partial(jax.jit, static_argnames=("top_k",))
def _sample(logits, key, step, temperature, *, top_k):
    return sample_logits(logits, step_key(key, step), temperature=temperature, top_k=top_k)


class Sampler:
    """Host-side next-token choice for decoders whose logits live in NumPy.

    ``Sampler(temperature, top_k, seed)(logits [B, vocab])`` -> int32 ``[B]`` NumPy, the
    ``i``-th call using ``step_key(seed, i)``. At temperature 0 it is ``np.argmax``.
    """

    def __init__(self, temperature=0.0, top_k: int | None = None, seed: int = 0):
        check_sampling(temperature, top_k, seed)
        self.temperature, self.top_k, self.seed = float(temperature), top_k, int(seed)
        self.key = jax.random.PRNGKey(self.seed)
        self.step = 0

    def __call__(self, logits) -> np.ndarray:
        if self.temperature == 0:
            token = np.argmax(np.asarray(logits), axis=-1).astype(np.int32)
        else:
            token = np.asarray(_sample(jnp.asarray(logits), self.key, self.step,
                                       self.temperature, top_k=self.top_k))
        self.step += 1
        return token


def check_token_ids(tokens, batch_size: int, vocab_size: int) -> np.ndarray:
    """``tokens`` as int32 ``[batch_size, n]`` NumPy; ``ValueError`` naming ``tokens`` for a
    wrong shape, a non-integer dtype or an id outside ``[0, vocab_size)``."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] != batch_size:
        raise ValueError(f"tokens must be [batch_size={batch_size}, n], got shape "
                         f"{tokens.shape}")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integer ids, got {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"tokens must be ids in [0, {vocab_size}), got values in "
                         f"[{tokens.min()}, {tokens.max()}]")
    return tokens.astype(np.int32)


def check_positive_int(name: str, value) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an int >= 1 (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def generate_by_feeding(decoder, max_new_tokens: int, *, prompt=None, temperature=0.0,
                        top_k: int | None = None, seed: int = 0) -> np.ndarray:
    """The host-side generation loop of a decoder whose ``feed(tokens [B, n])`` returns NumPy
    logits and leaves the last position's in ``decoder.last_logits``: feeds ``prompt`` if
    given, then ``max_new_tokens`` times picks a token with ``Sampler`` and feeds it back.
    Returns ``[B, max_new_tokens]`` int32."""
    check_positive_int("max_new_tokens", max_new_tokens)
    sampler = Sampler(temperature, top_k, seed)
    if prompt is not None:
        decoder.feed(prompt)
    if decoder.last_logits is None:
        raise ValueError("nothing to continue: feed a prompt first")
    out = []
    for _ in range(max_new_tokens):
        token = sampler(decoder.last_logits)
        out.append(token)
        decoder.feed(token[:, None])
    return np.stack(out, axis=1)
