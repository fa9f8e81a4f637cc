"""BERT teacher (Devlin et al. 2019) in Flax NNX, built from a Hugging Face config.

Forward returns, per layer, the attention probabilities [L, B, A, T, T] and the hidden states
[L, B, T, H], the same dict layout as the student (student.py), so distillation reads both
the same way. The L layers are one module with stacked parameters run by a scan (stack.py). MobileBERT / IB-BERT teachers are student.Student models loaded from their
HF checkpoints (hf.load_teacher picks by config.json's model_type).

The teacher is frozen during distillation and never checkpointed by the trainer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ad.models import layers, stack
from ad.models.student import mask_to_bias

ACTS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # BERT's erf GELU
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_positions: int = 512
  type_vocab_size: int = 2
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-12
  has_pooler: bool = True  # BertForMaskedLM checkpoints have none
  has_mlm_head: bool = True
  has_nsp_head: bool = True
  dtype: str = "float32"

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"BertConfig: num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}")
    if self.hidden_act not in ACTS:
      raise ValueError(f"BertConfig.hidden_act={self.hidden_act!r}: expected one of {sorted(ACTS)}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def from_hf(cls, hf: dict, **overrides) -> "BertConfig":
    """From a parsed HF config.json (model_type 'bert')."""
    try:
      kw = dict(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
                max_positions=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
                hidden_act=hf.get("hidden_act", "gelu"), layer_norm_eps=hf.get("layer_norm_eps", 1e-12))
    except KeyError as e:
      raise ValueError(f"HF BERT config.json lacks required key {e.args[0]!r}") from None
    kw.update(overrides)
    return cls(**kw)


def _dense(rngs, din, dout, cfg, axes=None):
  return layers.Dense(din, dout, cfg.compute_dtype, rngs, axes)


def _ln(dim, cfg, rngs):
  return layers.Norm(dim, "layer_norm", cfg.layer_norm_eps)


class BertLayer(nnx.Module):
  def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
    H, I = cfg.hidden_size, cfg.intermediate_size
    self.query, self.key, self.value = (_dense(rngs, H, H, cfg) for _ in range(3))
    self.attn_out = _dense(rngs, H, H, cfg)
    self.attn_norm = _ln(H, cfg, rngs)
    self.intermediate = _dense(rngs, H, I, cfg, ("embed", "mlp"))
    self.output = _dense(rngs, I, H, cfg, ("mlp", "embed"))
    self.output_norm = _ln(H, cfg, rngs)
    self.cfg = cfg

  def __call__(self, x, mask_bias):
    """x: [B, T, H] -> (out [B, T, H], probs [B, A, T, T])."""
    cfg = self.cfg
    B, T, H = x.shape
    A = cfg.num_heads
    D = H // A
    split = lambda t: t.reshape(B, T, A, D)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    s = jnp.einsum("btad,bsad->bats", q, k, preferred_element_type=jnp.float32) / math.sqrt(D) + mask_bias
    p = jax.nn.softmax(s, axis=-1)  # [B, A, T, T] f32
    ctx = jnp.einsum("bats,bsad->btad", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    ctx = ctx.astype(x.dtype).reshape(B, T, H)
    h = self.attn_norm(self.attn_out(ctx) + x)
    u = ACTS[cfg.hidden_act](self.intermediate(h))
    return self.output_norm(self.output(u) + h), p


class Bert(nnx.Module):
  def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
    init = lambda key, shape, dtype: layers.init_weight(key, shape)
    H, V = cfg.hidden_size, cfg.vocab_size
    self.cfg = cfg
    self.word = layers.param(init(rngs.params(), (V, H), jnp.float32), ("vocab", "embed"))
    self.position = layers.param(init(rngs.params(), (cfg.max_positions, H), jnp.float32))
    self.token_type = layers.param(init(rngs.params(), (cfg.type_vocab_size, H), jnp.float32))
    self.emb_norm = _ln(H, cfg, rngs)
    self.layers = stack.stacked(cfg.num_layers, lambda r: BertLayer(cfg, r), rngs)  # [L, ...] parameters
    if cfg.has_pooler:
      self.pooler = _dense(rngs, H, H, cfg)
    if cfg.has_mlm_head:
      self.mlm_transform = _dense(rngs, H, H, cfg)
      self.mlm_norm = _ln(H, cfg, rngs)
      self.mlm_bias = layers.param(jnp.zeros((V,), jnp.float32), ("vocab",))
    if cfg.has_nsp_head:
      self.nsp = _dense(rngs, H, 2, cfg)

  def embed(self, input_ids, token_type_ids=None):
    """input_ids: [B, T] -> [B, T, H]."""
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    T = input_ids.shape[1]
    h = self.word[...][input_ids] + self.position[...][:T][None] + self.token_type[...][token_type_ids]
    return self.emb_norm(h.astype(self.cfg.compute_dtype))

  def block(self, k) -> BertLayer:
    """Layer k (an int or a traced scalar); the name matches the student's for the trainer."""
    return stack.at(self.layers, k)

  def encode(self, input_ids, token_type_ids=None, attention_mask=None, num_blocks: int | None = None,
             unroll: bool = False, with_attentions: bool = True) -> dict[str, Any]:
    """input_ids: [B, T] -> dict(embeddings, hidden_states [L,B,T,H], attentions [L,B,A,T,T],
    sequence_output [B,T,H], pooled [B,H]). num_blocks runs only the first layers; unroll=True
    unrolls the layer loop (stack.scan); with_attentions is accepted for the student's interface
    (XLA drops probabilities nobody reads)."""
    cfg = self.cfg
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    emb = self.embed(input_ids, token_type_ids)
    mask_bias = mask_to_bias(attention_mask)

    def step(layer, h):
      with jax.named_scope("layer"):
        h, p = layer(h, mask_bias)
      return h, (h, p)
    h, (hidden_states, attentions) = stack.scan(self.layers, step, emb, num_blocks, unroll)
    pooled = jnp.tanh(self.pooler(h[:, 0])) if cfg.has_pooler else h[:, 0]
    return dict(embeddings=emb, hidden_states=hidden_states, attentions=attentions,
                sequence_output=h, pooled=pooled)

  def mlm_logits(self, h):
    """h: [..., H] -> [..., V] (f32); decoder tied to the word embeddings."""
    if not self.cfg.has_mlm_head:
      raise ValueError("this teacher has no MLM head; run `ad teacher prepare` to fit one")
    t = self.mlm_norm(ACTS[self.cfg.hidden_act](self.mlm_transform(h)))
    return layers.linear_transposed(t, self.word[...]).astype(jnp.float32) + self.mlm_bias[...]

  def nsp_logits(self, pooled):
    if not self.cfg.has_nsp_head:
      raise ValueError("this teacher has no NSP head")
    return self.nsp(pooled).astype(jnp.float32)

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None):
    out = jax.named_call(self.encode, name="teacher")(input_ids, token_type_ids, attention_mask)
    if self.cfg.has_mlm_head:
      out["mlm_logits"] = self.mlm_logits(out["sequence_output"])
    if self.cfg.has_nsp_head:
      out["nsp_logits"] = self.nsp_logits(out["pooled"])
    return out
