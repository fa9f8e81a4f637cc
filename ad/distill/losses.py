"""Distillation losses (003 section 3.3) and the parameter surgery that starts a student.

- attention_kl (eq. 1): KL(teacher || student) between attention distributions, averaged
  over valid query positions and heads. Head counts differ (teacher 12, students 1-8): when
  the student's head count divides the teacher's, each student head is matched with the mean
  of its group of teacher heads (teacher heads h*g .. h*g+g-1, g = A_t / A_s); otherwise both
  sides are averaged over all heads. A mean of attention distributions is a distribution, so
  the KL stays a KL, and with equal head counts this is exactly eq. 1.
- feature_mse (eq. 2): mean squared error between the teacher's hidden state and the
  student block output passed through an adapter (a dense H_s -> H_t layer; identity when the
  widths match), averaged over valid positions and features (003 section 3.3.2).
- pretraining_loss (eq. 3): alpha * MLM + (1 - alpha) * MLM-KD + NSP. MLM-KD is the soft
  cross-entropy to the teacher's distribution at temperature T, scaled by T^2 (Hinton et al.)
  so its gradient scale does not depend on T.
- mobilebert_feature_loss: MobileBERT's own recipe as coded: MSE of layer-normalized hidden
  states plus mean and variance matching terms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ad.models import layers, stack


def gather_positions(x, positions):
  """x: [B, T, H], positions: [B, P] -> [B, P, H] (the masked positions' hidden states)."""
  return jnp.take_along_axis(x, positions[..., None], axis=1)


def _masked_mean(x, mask):
  """x: [B, T, ...] reduced to [B, T] already; mask: [B, T] -> scalar mean over valid positions."""
  mask = mask.astype(jnp.float32)
  return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def match_heads(t_probs, s_probs):
  """t: [B, At, T, T], s: [B, As, T, T] -> both [B, A, T, T] with a common head count A."""
  at, as_ = t_probs.shape[1], s_probs.shape[1]
  if at == as_:
    return t_probs, s_probs
  if at % as_ == 0:
    b, _, t, s = t_probs.shape
    return t_probs.reshape(b, as_, at // as_, t, s).mean(2), s_probs
  return t_probs.mean(1, keepdims=True), s_probs.mean(1, keepdims=True)


def attention_kl(t_probs, s_probs, attention_mask, eps: float = 1e-12):
  """Eq. 1. t_probs: [B, At, T, T], s_probs: [B, As, T, T], attention_mask: [B, T] -> scalar."""
  t, s = match_heads(t_probs.astype(jnp.float32), s_probs.astype(jnp.float32))
  kl = jnp.where(t > 0, t * (jnp.log(jnp.maximum(t, eps)) - jnp.log(jnp.maximum(s, eps))), 0.0).sum(-1)  # [B, A, T]
  return _masked_mean(kl.mean(1), attention_mask)


def feature_mse(t_hidden, s_hidden_adapted, attention_mask):
  """Eq. 2. t_hidden, s_hidden_adapted: [B, T, N], attention_mask: [B, T] -> scalar."""
  d = jnp.square(t_hidden.astype(jnp.float32) - s_hidden_adapted.astype(jnp.float32)).mean(-1)
  return _masked_mean(d, attention_mask)


def mobilebert_feature_loss(t_hidden, s_hidden_adapted, attention_mask, eps: float = 1e-6):
  """MobileBERT's feature-map transfer: normalized-hidden MSE + mean and variance terms.

  Returns (mse, mean_term, var_term), each a scalar; the recipe weights them (see trainer).
  """
  t = t_hidden.astype(jnp.float32)
  s = s_hidden_adapted.astype(jnp.float32)
  tm, sm = t.mean(-1), s.mean(-1)
  tv, sv = t.var(-1), s.var(-1)
  tn = (t - tm[..., None]) * jax.lax.rsqrt(tv[..., None] + eps)
  sn = (s - sm[..., None]) * jax.lax.rsqrt(sv[..., None] + eps)
  mse = _masked_mean(jnp.square(tn - sn).mean(-1), attention_mask)
  return mse, _masked_mean(jnp.abs(tm - sm), attention_mask), _masked_mean(jnp.abs(tv - sv), attention_mask)


def mlm_loss(logits, labels, weights):
  """logits [B, P, V] f32, labels [B, P], weights [B, P] -> mean CE over masked tokens."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return (ce * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def mlm_kd_loss(s_logits, t_logits, weights, temperature: float):
  """Soft cross-entropy to the teacher at temperature T, times T^2; [B, P, V] -> scalar."""
  t = jax.nn.softmax(t_logits / temperature, -1)
  ce = -(t * jax.nn.log_softmax(s_logits / temperature, -1)).sum(-1)
  return (ce * weights).sum() / jnp.maximum(weights.sum(), 1.0) * temperature ** 2


def nsp_loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def pretraining_loss(s_mlm, t_mlm, s_nsp, batch, alpha: float, temperature: float):
  """Eq. 3 -> (total, dict of terms)."""
  w = batch["masked_weights"]
  lm = mlm_loss(s_mlm, batch["masked_ids"], w)
  kd = mlm_kd_loss(s_mlm, t_mlm, w, temperature)
  ln = nsp_loss(s_nsp, batch["nsp_label"])
  return alpha * lm + (1 - alpha) * kd + ln, dict(mlm=lm, mlm_kd=kd, nsp=ln)


# ---------------------------------------------------------------------------------------------
# Adapters and block mapping.

class Adapters(nnx.Module):
  """One dense H_s -> H_t per student block (003 section 3.3.2), stacked like the blocks;
  identity where the widths match.

  They live beside the student, not inside it, so exported checkpoints never contain them.
  """

  def __init__(self, num_blocks: int, student_hidden: int, teacher_hidden: int, rngs: nnx.Rngs,
               compute_dtype="float32"):
    self.identity = student_hidden == teacher_hidden
    if not self.identity:
      self.dense = stack.stacked(num_blocks, lambda r: layers.Dense(student_hidden, teacher_hidden, compute_dtype, r),
                                 rngs)

  def __call__(self, k, h):
    """Block k's adapter (k an int or a traced scalar): h [B, T, H_s] -> [B, T, H_t]."""
    return h if self.identity else stack.at(self.dense, k)(h)


def block_mapping(num_student_blocks: int, num_teacher_layers: int) -> list[int]:
  """Student block k (0-based) learns from teacher layer ceil((k+1) * L / K) - 1: the layer at the
  same relative depth, so the last block always learns from the last layer.

  K <= L: a uniform subset of the layers (K=3, L=6: layers 1, 3, 5). K > L (a student deeper than
  its teacher, e.g. 24 blocks from the 6-layer MiniLM): each teacher layer supervises a contiguous
  group of ceil(K / L) or floor(K / L) blocks (24 from 6: blocks 0-3 from layer 0, ..., 20-23 from
  layer 5); within a group the later blocks learn to keep the layer's representation, and
  pre-training distillation, which has no layer targets, trains the whole stack afterwards."""
  k, l = num_student_blocks, num_teacher_layers
  if k <= 0 or l <= 0:
    raise ValueError(f"block mapping needs positive counts, got student={k} teacher={l}")
  return [-(-(i + 1) * l // k) - 1 for i in range(k)]


def resample(x, size: int, axis: int = -1):
  """Linear resampling of `x` along `axis` to `size` (down- or up-sampling, 003 section 3.3.2).

  Each output feature j is read at position j * (n - 1) / (size - 1) of the input features and
  linearly interpolated; equal sizes give `x` back exactly.
  """
  n = x.shape[axis]
  if n == size:
    return x
  pos = jnp.linspace(0.0, n - 1.0, size) if size > 1 else jnp.zeros((1,))
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, n - 1)
  frac = (pos - lo).astype(x.dtype)
  xlo, xhi = jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis)
  shape = [1] * x.ndim
  shape[axis] = size
  return xlo * (1 - frac.reshape(shape)) + xhi * frac.reshape(shape)


def teacher_layers(teacher):
  """The stacked layers the progressive stages map onto: a BERT teacher's `layers`, a
  MobileBERT/IB-BERT (Student) teacher's `blocks`; each is called as layer(h, mask_bias) ->
  (h, attention probabilities)."""
  return teacher.layers if hasattr(teacher, "layers") else teacher.blocks


def teacher_dims(teacher) -> tuple[int, int, int]:
  """(layers, hidden, heads) of a BERT teacher or a MobileBERT/IB-BERT (Student) teacher."""
  c = teacher.cfg
  if hasattr(c, "num_layers"):
    return c.num_layers, c.hidden_size, c.num_heads
  return c.num_blocks, c.arch.hidden, c.arch.heads


def _teacher_embedding_tables(teacher):
  e = getattr(teacher, "embeddings", teacher)  # Student keeps them in .embeddings, Bert on itself
  return e.word[...], e.position[...], e.token_type[...]


def init_embeddings_from_teacher(student, teacher) -> None:
  """Copies the teacher's word, position and token-type embeddings into the student,
  resampled along the feature axis to the student's sizes (word: -> E, others: -> H_s),
  and the teacher's MLM output bias (its log-unigram prior; no feature axis to resample),
  so even a briefly distilled student starts from the teacher's token prior."""
  se, cfg = student.embeddings, student.cfg
  tw, tpos, ttype = _teacher_embedding_tables(teacher)
  if tw.shape[0] != cfg.vocab_size:
    raise ValueError(f"teacher vocab {tw.shape[0]} != student vocab {cfg.vocab_size}: embeddings cannot be copied")
  se.word[...] = resample(tw, cfg.embedding_size)
  pos = resample(tpos, cfg.arch.hidden)
  n = min(pos.shape[0], cfg.max_positions)
  se.position[...] = se.position[...].at[:n].set(pos[:n])
  tt = resample(ttype, cfg.arch.hidden)
  m = min(tt.shape[0], cfg.type_vocab_size)
  se.token_type[...] = se.token_type[...].at[:m].set(tt[:m])
  if hasattr(teacher, "mlm_bias"):  # a BERT without an MLM head has none
    student.mlm_bias[...] = jnp.asarray(teacher.mlm_bias[...], jnp.float32)
