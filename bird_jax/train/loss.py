"""Next-token cross entropy over supervised tokens (labels IGNORE_ID = -100 are ignored).

The loss is computed from the final hidden states in chunks along the sequence, each chunk's
fp32 logits recomputed in the backward pass: full [B, L, vocab] logits never exist at once
(2048 x 151,936 fp32 logits are 1.2 GB per row).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bird_jax.vocabulary import IGNORE_ID


def shifted_targets(labels: jax.Array) -> jax.Array:
  """Position t predicts labels[t + 1]; the last position predicts nothing."""
  pad = jnp.full(labels.shape[:-1] + (1,), IGNORE_ID, labels.dtype)
  return jnp.concatenate([labels[..., 1:], pad], axis=-1)


def token_stats(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
  """Sums over supervised positions: nll, correct (argmax == target), count."""
  mask = targets != IGNORE_ID
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, jnp.where(mask, targets, 0)[..., None], axis=-1)[..., 0]
  nll = jnp.where(mask, logz - picked, 0.0)
  correct = mask & (jnp.argmax(logits, axis=-1) == targets)
  return {"nll": nll.sum(), "correct": correct.sum(dtype=jnp.float32), "count": mask.sum(dtype=jnp.float32)}


def lm_loss_stats(hidden: jax.Array, logits_fn, labels: jax.Array,
                  chunk: int = 0) -> dict[str, jax.Array]:
  """token_stats of `logits_fn(hidden)` against the shifted labels.

  chunk > 0: the sequence is processed `chunk` positions at a time under `jax.checkpoint`
  (peak logits memory B x chunk x vocab instead of B x L x vocab).
  """
  targets = shifted_targets(labels)
  n = hidden.shape[1]
  if not chunk or chunk >= n:
    return token_stats(logits_fn(hidden), targets)
  pad = (-n) % chunk
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)), constant_values=IGNORE_ID)
  b = hidden.shape[0]
  hs = hidden.reshape(b, -1, chunk, hidden.shape[-1]).swapaxes(0, 1)
  ts = targets.reshape(b, -1, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one(h, t):
    return token_stats(logits_fn(h), t)

  def body(acc, xs):
    s = one(*xs)
    return jax.tree.map(jnp.add, acc, s), None

  zero = {"nll": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.float32),
          "count": jnp.zeros((), jnp.float32)}
  return jax.lax.scan(body, zero, (hs, ts))[0]
