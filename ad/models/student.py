"""The MobileBERT-style student of 003 Fig. 2 (MobileBERT's layer, Sun et al. 2020).

One block, for input x: [B, T, H] (hidden H, bottleneck Bn, heads A, intermediate I, F FFNs):
  layer_input = norm(x @ W_in)              [B, T, Bn]  input bottleneck (residual for attention)
  qk          = norm(x @ W_qk)              [B, T, Bn]  query and key share one bottleneck
  q, k        = qk @ Wq, qk @ Wk            [B, T, Bn]  split into A heads of Bn / A
  v           = x @ Wv                      [B, T, Bn]  values from the wide input
  h           = norm(attn(q, k, v) @ Wo + layer_input)
  F times:  h = norm(relu(h @ W1) @ W2 + h)  (the F-th FFN is MobileBERT's intermediate/output)
  out         = norm(h @ W_out + x)          [B, T, H]  output bottleneck, residual to block input

`norm` is MobileBERT's NoNorm (x * gamma + beta) or LayerNorm, by config. The other options of
the MobileBERT family (IB-BERT's bottleneck attention, where q, k and v all come from the input
bottleneck; the activation; the pooler's tanh) follow transformers' MobileBertConfig names. The input
embedding is MobileBERT's trigram embedding (embedding size E -> H). Heads: MLM (transform,
then logits against [word embeddings | an extra V x (H - E) matrix]) and NSP (tanh pooler).

The K blocks are one module with stacked parameters (leading 'layers' axis, stack.py), run by
one lax.scan. The forward returns every block's attention probabilities [K, B, A, T, T] and
output [K, B, T, H]: the targets of the layer-wise transfer (003 eq. 1 and 2). Parameter
numerics follow Hugging Face's MobileBertForPreTraining, so checkpoints convert both ways
(hf.py, which indexes the stacked axis). Parameters declare their logical axes where they are
made (layers.param); ad/train/sharding.py maps them to the mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from ad import configs
from ad.models import layers, stack
from ad.space import Arch
from ad.train import sharding
from kernels import devices, fused_attention, fused_ffn

NORMS = layers.NORMS
# transformers' MobileBERT builds two of its LayerNorms without config.layer_norm_eps, so they
# use torch's default: the embeddings' and the last FFN's (MobileBertOutput). The student does
# the same, so a layer_norm checkpoint computes the same numbers on both sides.
TORCH_DEFAULT_LAYER_NORM_EPS = 1e-5
apply_norm = layers.apply_norm
# attention_impl / ffn_impl: 'auto' runs the Pallas kernels where the program is compiled for a TPU or
# GPU (the devices of the mesh the caller sets, kernels/devices.py) and XLA's path elsewhere.
IMPLS = ("auto", "xla", "pallas")
# transformers' ACT2FN names: "gelu" is the exact (erf) GELU, "gelu_new" the tanh approximation.
ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_new": lambda x: jax.nn.gelu(x, approximate=True)}
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class StudentConfig:
  arch: Arch
  num_blocks: int = 24
  vocab_size: int = 30522
  embedding_size: int = 128
  max_positions: int = 512
  type_vocab_size: int = 2
  norm: str = "no_norm"
  layer_norm_eps: float = 1e-12
  trigram_input: bool = True
  dtype: str = "float32"  # compute dtype; parameters stay f32
  attention_impl: str = "auto"
  ffn_impl: str = "auto"
  # MobileBERT-family options (transformers' MobileBertConfig names; defaults: MobileBERT's, 003 Fig. 2).
  key_query_shared_bottleneck: bool = True  # queries and keys from their own shared bottleneck of x
  use_bottleneck_attention: bool = False  # queries, keys and values all from the input bottleneck (IB-BERT)
  hidden_act: str = "relu"  # the FFNs' and the MLM transform's activation
  classifier_activation: bool = True  # pooled = tanh(dense(first token)); False: the first token as it is

  def __post_init__(self):
    if isinstance(self.arch, str):
      object.__setattr__(self, "arch", Arch.parse(self.arch))
    if self.num_blocks <= 0:
      raise ValueError(f"StudentConfig.num_blocks must be positive, got {self.num_blocks}")
    if self.norm not in NORMS:
      raise ValueError(f"StudentConfig.norm={self.norm!r}: expected one of {NORMS}")
    for key in ("attention_impl", "ffn_impl"):
      if getattr(self, key) not in IMPLS:
        raise ValueError(f"StudentConfig.{key}={getattr(self, key)!r}: expected one of {IMPLS}")
    if self.embedding_size > self.arch.hidden:
      raise ValueError(
          f"StudentConfig.embedding_size={self.embedding_size} exceeds hidden={self.arch.hidden}: the MLM "
          "decoder appends a V x (hidden - embedding) matrix to the word embeddings, so embedding <= hidden")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"StudentConfig.hidden_act={self.hidden_act!r}: expected one of {sorted(ACTIVATIONS)}")
    if not (self.use_bottleneck_attention or self.key_query_shared_bottleneck):
      raise ValueError("StudentConfig: key_query_shared_bottleneck=False needs use_bottleneck_attention=True (queries "
                       "and keys from the wide input would need hidden == bottleneck, which the template does not use)")
    if self.hidden_act != "relu" and self.ffn_impl == "pallas":
      raise ValueError(f"StudentConfig: ffn_impl='pallas' fuses relu FFNs only, not hidden_act={self.hidden_act!r}")
    if self.dtype not in COMPUTE_DTYPES:
      raise ValueError(f"StudentConfig.dtype={self.dtype!r} (model.dtype / --dtype): expected one of {COMPUTE_DTYPES}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


def _dense(rngs, din, dout, cfg, axes=None):
  # f32 parameters, computed in cfg.dtype with f32 accumulation (layers.py); softmax and norm
  # statistics are explicitly f32.
  return layers.Dense(din, dout, cfg.compute_dtype, rngs, axes)


class Embeddings(nnx.Module):
  def __init__(self, cfg: StudentConfig, rngs: nnx.Rngs):
    init = lambda key, shape, dtype: layers.init_weight(key, shape)
    H, E = cfg.arch.hidden, cfg.embedding_size
    self.word = layers.param(init(rngs.params(), (cfg.vocab_size, E), jnp.float32), ("vocab", "embed"))
    self.position = layers.param(init(rngs.params(), (cfg.max_positions, H), jnp.float32))
    self.token_type = layers.param(init(rngs.params(), (cfg.type_vocab_size, H), jnp.float32))
    in_dim = 3 * E if cfg.trigram_input else E
    self.transform = _dense(rngs, in_dim, H, cfg)
    self.norm = layers.Norm(H, cfg.norm, TORCH_DEFAULT_LAYER_NORM_EPS)
    self.cfg = cfg

  def __call__(self, input_ids, token_type_ids):
    """input_ids, token_type_ids: [B, T] int -> [B, T, H]."""
    cfg = self.cfg
    T = input_ids.shape[1]
    e = self.word[...][input_ids].astype(cfg.compute_dtype)  # [B, T, E]
    if cfg.trigram_input:
      # MobileBERT's trigram input: [next token | token | previous token], zero-padded at the ends.
      nxt = jnp.pad(e[:, 1:], ((0, 0), (0, 1), (0, 0)))
      prv = jnp.pad(e[:, :-1], ((0, 0), (1, 0), (0, 0)))
      e = jnp.concatenate([nxt, e, prv], axis=-1)  # [B, T, 3E]
    h = self.transform(e)  # [B, T, H]
    h = h + self.position[...][:T][None].astype(h.dtype) + self.token_type[...][token_type_ids].astype(h.dtype)
    return self.norm(h)


class StackedFFN(nnx.Module):
  """F FFNs of one block with their weights stacked on a leading [F] axis.

  Stacking keeps the F layers in one array each, which is what the fused Pallas kernel
  consumes and what lets XLA see one loop body.
  """

  def __init__(self, cfg: StudentConfig, rngs: nnx.Rngs):
    F, Bn, I = cfg.arch.num_ffn, cfg.arch.bottleneck, cfg.arch.intermediate
    init = lambda key, shape, dtype: layers.init_weight(key, shape)
    stacked = lambda value, *axes: layers.param(value, ("ffn_layers",) + axes)  # stack.STACK_AXES
    self.w_in = stacked(init(rngs.params(), (F, Bn, I), jnp.float32), "intra", "mlp")
    self.b_in = stacked(jnp.zeros((F, I), jnp.float32), "mlp")
    self.w_out = stacked(init(rngs.params(), (F, I, Bn), jnp.float32), "mlp", "intra")
    self.b_out = stacked(jnp.zeros((F, Bn), jnp.float32), None)
    self.norm_scale = stacked(jnp.ones((F, Bn), jnp.float32), None)
    self.norm_bias = stacked(jnp.zeros((F, Bn), jnp.float32), None)
    self.cfg = cfg

  def __call__(self, h):
    """h: [B, T, Bn] -> [B, T, Bn]."""
    cfg = self.cfg
    F = cfg.arch.num_ffn
    eps = (cfg.layer_norm_eps,) * (F - 1) + (TORCH_DEFAULT_LAYER_NORM_EPS,)  # the last is MobileBertOutput's
    weights = (self.w_in[...], self.b_in[...], self.w_out[...], self.b_out[...], self.norm_scale[...],
               self.norm_bias[...])
    if kernel_choice(cfg, "ffn", devices.target_platform())[0] == "pallas":
      # Each device runs the kernel on its rows: batch over 'data', positions over 'model' where
      # they divide; the weights are whole on every device (their gradients are summed).
      rows = sharding.activation_spec(("batch", "length", None), h.shape)
      fused = lambda h, *w: fused_ffn.stacked_ffn(h, *w, norm=cfg.norm, eps=eps)
      return devices.per_shard(fused, (rows,) + (P(),) * 6, rows)(h, *weights)
    return fused_ffn.stacked_ffn_reference(h, *weights, norm=cfg.norm, eps=eps, act=ACTIVATIONS[cfg.hidden_act],
                                           linear=layers.linear, apply_norm=layers.apply_norm)


class Block(nnx.Module):
  def __init__(self, cfg: StudentConfig, rngs: nnx.Rngs):
    a = cfg.arch
    H, Bn = a.hidden, a.bottleneck
    self.input_bottleneck = _dense(rngs, H, Bn, cfg)
    self.input_norm = layers.Norm(Bn, cfg.norm, cfg.layer_norm_eps)
    if cfg.key_query_shared_bottleneck:  # (unused, as in transformers, under use_bottleneck_attention)
      self.qk_bottleneck = _dense(rngs, H, Bn, cfg)
      self.qk_norm = layers.Norm(Bn, cfg.norm, cfg.layer_norm_eps)
    self.query = _dense(rngs, Bn, Bn, cfg)
    self.key = _dense(rngs, Bn, Bn, cfg)
    self.value = _dense(rngs, Bn if cfg.use_bottleneck_attention else H, Bn, cfg)
    self.attn_out = _dense(rngs, Bn, Bn, cfg)
    self.attn_norm = layers.Norm(Bn, cfg.norm, cfg.layer_norm_eps)
    self.ffn = StackedFFN(cfg, rngs)
    self.output_bottleneck = _dense(rngs, Bn, H, cfg)
    self.output_norm = layers.Norm(H, cfg.norm, cfg.layer_norm_eps)
    self.cfg = cfg

  def __call__(self, x, mask_bias, with_probs: bool = True):
    """x: [B, T, H], mask_bias: [B, 1, 1, T] -> (out [B, T, H], attention probs [B, A, T, T] f32, or
    None when not `with_probs`: the fused kernel then does not write them)."""
    cfg, a = self.cfg, self.cfg.arch
    B, T, _ = x.shape
    with jax.named_scope("bottleneck"):
      layer_input = self.input_norm(self.input_bottleneck(x))  # [B, T, Bn]
      if cfg.use_bottleneck_attention:
        qk, v_in = layer_input, layer_input
      else:
        qk, v_in = self.qk_norm(self.qk_bottleneck(x)), x  # [B, T, Bn], [B, T, H]
    with jax.named_scope("attention"):
      split = lambda t: t.reshape(B, T, a.heads, a.head_dim)  # [B, T, A, D]
      q, k, v = split(self.query(qk)), split(self.key(qk)), split(self.value(v_in))
      if kernel_choice(cfg, "attention", devices.target_platform())[0] == "pallas":
        ctx, probs = _fused_attention(q, k, v, mask_bias, with_probs)
      else:
        ctx, probs = fused_attention.attention_reference(q, k, v, mask_bias)
        probs = probs if with_probs else None
      ctx = ctx.reshape(B, T, a.bottleneck)
      h = self.attn_norm(self.attn_out(ctx) + layer_input)  # [B, T, Bn]
    with jax.named_scope("ffn"):
      h = self.ffn(h)
    with jax.named_scope("output_bottleneck"):
      out = self.output_norm(self.output_bottleneck(h) + x)  # [B, T, H]
    return out, probs


class Student(nnx.Module):
  """MobileBERT-style student with MLM and NSP heads."""

  def __init__(self, cfg: StudentConfig, rngs: nnx.Rngs):
    H, E, V = cfg.arch.hidden, cfg.embedding_size, cfg.vocab_size
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, rngs)
    self.blocks = stack.stacked(cfg.num_blocks, lambda r: Block(cfg, r), rngs)  # [K, ...] parameters
    if cfg.classifier_activation:
      self.pooler = _dense(rngs, H, H, cfg)
    self.mlm_transform = _dense(rngs, H, H, cfg)
    self.mlm_norm = layers.Norm(H, "layer_norm", cfg.layer_norm_eps)  # MobileBERT's MLM transform always uses LayerNorm
    # Logits are h @ [word^T ; extra^T]: the word embeddings cover the first E columns of h,
    # `mlm_extra` the remaining H - E (MobileBERT's decoder for embedding < hidden).
    self.mlm_extra = layers.param(layers.init_weight(rngs.params(), (H - E, V)),
                                     ("embed", "vocab"))
    self.mlm_bias = layers.param(jnp.zeros((V,), jnp.float32), ("vocab",))
    self.nsp = _dense(rngs, H, 2, cfg)

  def embed(self, input_ids, token_type_ids=None):
    """input_ids: [B, T] -> [B, T, H]."""
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    with jax.named_scope("embeddings"):
      return self.embeddings(input_ids, token_type_ids)

  def block(self, k) -> "Block":
    """Block k (an int or a traced scalar)."""
    return stack.at(self.blocks, k)

  def encode(self, input_ids, token_type_ids=None, attention_mask=None, num_blocks: int | None = None,
             unroll: bool = False, with_attentions: bool = True) -> dict[str, Any]:
    """input_ids: [B, T] -> dict(embeddings [B,T,H], hidden_states [K,B,T,H], attentions [K,B,A,T,T]
    (None unless `with_attentions`), sequence_output [B,T,H], pooled [B,H]).

    num_blocks runs only the first blocks; unroll=True unrolls the block loop (stack.scan).
    """
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    mask_bias = mask_to_bias(attention_mask)
    emb = self.embed(input_ids, token_type_ids)

    def step(block, h):
      with jax.named_scope("block"):
        h, probs = block(h, mask_bias, with_attentions)
      return h, (h, probs)
    h, (hidden_states, attentions) = stack.scan(self.blocks, step, emb, num_blocks, unroll)
    with jax.named_scope("pooler"):
      pooled = jnp.tanh(self.pooler(h[:, 0])) if self.cfg.classifier_activation else h[:, 0]
    return dict(embeddings=emb, hidden_states=hidden_states, attentions=attentions,
                sequence_output=h, pooled=pooled)

  def mlm_logits(self, h):
    """h: [..., H] -> [..., V] (f32)."""
    E = self.cfg.embedding_size
    t = self.mlm_norm(ACTIVATIONS[self.cfg.hidden_act](self.mlm_transform(h)))
    logits = layers.linear_transposed(t[..., :E], self.embeddings.word[...]).astype(jnp.float32)
    if self.mlm_extra.shape[0]:
      logits += layers.linear(t[..., E:], self.mlm_extra[...]).astype(jnp.float32)
    return logits + self.mlm_bias[...]

  def nsp_logits(self, pooled):
    """pooled: [B, H] -> [B, 2] (f32)."""
    return self.nsp(pooled).astype(jnp.float32)

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, unroll: bool = False):
    out = jax.named_call(self.encode, name="student")(input_ids, token_type_ids, attention_mask, unroll=unroll)
    out["mlm_logits"] = self.mlm_logits(out["sequence_output"])
    out["nsp_logits"] = self.nsp_logits(out["pooled"])
    return out


def kernel_choice(cfg: StudentConfig, which: str, platform: str) -> tuple[str, str]:
  """('pallas' | 'xla', why) for the block's attention or FFN ('attention' / 'ffn') in a program compiled
  for `platform` ('tpu', 'gpu', 'cpu'): model.attention_impl / model.ffn_impl, with 'auto' resolved."""
  impl = cfg.attention_impl if which == "attention" else cfg.ffn_impl
  if impl != "auto":
    return impl, f"model.{which}_impl={impl!r}"
  if platform not in devices.COMPILED_PLATFORMS:
    return "xla", f"auto on {platform}: Pallas kernels run only interpreted there"
  if which == "ffn" and cfg.hidden_act != "relu":
    return "xla", f"auto: the fused FFN kernel is relu-only and model.hidden_act={cfg.hidden_act!r}"
  return "pallas", f"auto on {platform}"


def resolve_kernels(cfg: StudentConfig, platform: str) -> StudentConfig:
  """cfg with 'auto' kernel choices replaced by what a program for `platform` runs: what a run
  record keeps, so a record says what ran (on a CPU, 'auto' and 'xla' runs are the same run)."""
  return dataclasses.replace(cfg, attention_impl=kernel_choice(cfg, "attention", platform)[0],
                             ffn_impl=kernel_choice(cfg, "ffn", platform)[0])


def _fused_attention(q, k, v, mask_bias, with_probs: bool):
  """The Pallas attention kernel, per device under a mesh: batch over 'data', heads over 'model' where
  they divide. q, k, v: [B, T, A, D] -> (out [B, T, A, D], probs [B, A, T, T] or None)."""
  B, T, A, _ = q.shape
  qkv = sharding.activation_spec(("batch", None, "heads", None), q.shape)
  bias = sharding.activation_spec(("batch", None, None, None), mask_bias.shape)
  probs = sharding.activation_spec(("batch", "heads", None, None), (B, A, T, T)) if with_probs else None
  call = lambda q, k, v, b: fused_attention.mha(q, k, v, b, return_probs=with_probs)
  return devices.per_shard(call, (qkv, qkv, qkv, bias), (qkv, probs))(q, k, v, mask_bias)


def mask_to_bias(attention_mask):
  """[B, T] {0,1} -> [B, 1, 1, T] additive bias (large negative on padding, f32)."""
  return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Parameter counts, in closed form so the design space can be screened without building models;
# tests check them against the real modules.

def param_counts(cfg: StudentConfig) -> dict[str, int]:
  """Parameters by part. `paper_total` is what 003 Table 2 counts (everything but `mlm_extra`)."""
  a = cfg.arch
  H, Bn, I, F, E, V = a.hidden, a.bottleneck, a.intermediate, a.num_ffn, cfg.embedding_size, cfg.vocab_size
  lin = lambda i, o: i * o + o
  norm = lambda d: 2 * d
  emb_in = 3 * E if cfg.trigram_input else E
  embeddings = V * E + cfg.max_positions * H + cfg.type_vocab_size * H + lin(emb_in, H) + norm(H)
  qk_bottlenecks = 2 if cfg.key_query_shared_bottleneck else 1
  block = (qk_bottlenecks * (lin(H, Bn) + norm(Bn))  # input and shared query/key bottlenecks
           + 2 * lin(Bn, Bn) + lin(Bn if cfg.use_bottleneck_attention else H, Bn)  # query, key, value
           + lin(Bn, Bn) + norm(Bn)  # attention output
           + F * (lin(Bn, I) + lin(I, Bn) + norm(Bn))  # stacked FFNs
           + lin(Bn, H) + norm(H))  # output bottleneck
  encoder = cfg.num_blocks * block
  pooler = lin(H, H) if cfg.classifier_activation else 0
  mlm_head = lin(H, H) + norm(H) + V  # transform + norm + output bias (decoder tied to word embeddings)
  nsp_head = lin(H, 2)
  mlm_extra = V * (H - E)
  counts = dict(embeddings=embeddings, encoder=encoder, block=block, pooler=pooler, mlm_head=mlm_head,
                nsp_head=nsp_head, mlm_extra=mlm_extra)
  counts["paper_total"] = embeddings + encoder + pooler + mlm_head + nsp_head
  counts["total"] = counts["paper_total"] + mlm_extra
  return counts


def count_module_params(module: nnx.Module) -> int:
  state = nnx.state(module, nnx.Param)
  return sum(int(x.size) for x in jax.tree.leaves(state))


def config_from_dict(arch: Arch | str, model_cfg, **overrides) -> StudentConfig:
  """StudentConfig from a config's `model` section; unknown keys are errors that name them."""
  given = dict(model_cfg) if model_cfg is not None else {}
  given.update({k: v for k, v in overrides.items() if v is not None})
  return configs.section(StudentConfig, given, "model", arch=Arch.parse(arch))


def model_section(cfg: StudentConfig) -> dict:
  """A config's `model` section that gives back `cfg` with its arch (config_from_dict's inverse)."""
  return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "arch"}


def abstract_student(cfg: StudentConfig) -> Student:
  """A Student whose parameters are ShapeDtypeStructs: for counting and compile-only analysis."""
  return nnx.eval_shape(lambda: Student(cfg, nnx.Rngs(0)))
