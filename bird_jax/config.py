"""Model configuration: dataclasses, named presets, and HF `config.json` interop.

Presets are data, not code paths: the same modules serve every size.

    >>> cfg = get_preset("tiny")
    >>> hf_dict, cfg = read_hf_config("Qwen-VL-Chat")   # Qwen-VL-Chat/config.json
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

# Qwen-VL's tokenizer ids (docs/tokenizer.md). The model reads the image-start id from its
# config and derives </img> = start + 1 and <imgpad> = start + 2.
QWEN_IMAGE_START_ID = 151857
# Byte tokenizer: 256 byte ids, then Qwen's 217 special tokens in Qwen's order
# (<|endoftext|> = 256, ..., <img> = 470, </img> = 471, <imgpad> = 472).
BYTE_IMAGE_START_ID = 470
BYTE_VOCAB_SIZE = 512  # 473 ids used, padded for alignment

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
TOKENIZERS = ("qwen", "byte")
# config.json's tokenizer_type (the release writes QWenTokenizer) -> the tokenizer it names
TOKENIZER_TYPES = {"QWenTokenizer": "qwen", "ByteTokenizer": "byte"}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """OpenCLIP-style ViT + Qwen-VL resampler ("attn_pool") + output projection."""

  image_size: int = 448
  patch_size: int = 14
  width: int = 1664
  layers: int = 48
  heads: int = 16
  mlp_dim: int = 8192
  # The reference's learned positional grid is 16x16 at every image size (resized to the
  # patch grid each forward); its resampler has 256 queries = a 16x16 query grid.
  pos_grid: int = 16
  n_queries: int = 256
  output_dim: int = 4096
  resampler_head_dim: int = 128  # the reference uses output_dim // 128 heads
  ln_eps: float = 1e-6

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid * self.grid

  @property
  def head_dim(self) -> int:
    return self.width // self.heads

  @property
  def query_grid(self) -> int:
    return math.isqrt(self.n_queries)

  @property
  def resampler_heads(self) -> int:
    return self.output_dim // self.resampler_head_dim

  @property
  def has_kv_proj(self) -> bool:
    return self.width != self.output_dim

  def validate(self) -> None:
    _require(self.image_size % self.patch_size == 0,
             f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
    _require(self.width % self.heads == 0, f"vision.width {self.width} not divisible by heads {self.heads}")
    _require(self.query_grid ** 2 == self.n_queries,
             f"vision.n_queries {self.n_queries} must be a perfect square (a 2D query grid)")
    _require(self.output_dim % self.resampler_head_dim == 0 and self.resampler_heads > 0,
             f"vision.output_dim {self.output_dim} not divisible by resampler_head_dim {self.resampler_head_dim}")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  """Qwen-7B (v1) decoder."""

  vocab_size: int = 151936
  hidden: int = 4096
  layers: int = 32
  heads: int = 32
  head_dim: int = 128  # HF `kv_channels`
  mlp_dim: int = 11008  # each SwiGLU branch; HF `intermediate_size` is twice this
  rms_eps: float = 1e-6
  rope_base: float = 10000.0
  seq_length: int = 2048  # training length; dynamic NTK / logn act beyond it
  max_position_embeddings: int = 8192  # longest sequence the model accepts
  use_dynamic_ntk: bool = True
  use_logn_attn: bool = True

  def validate(self) -> None:
    _require(self.heads * self.head_dim == self.hidden,
             f"llm.heads * head_dim = {self.heads * self.head_dim} != hidden {self.hidden}")
    _require(self.head_dim % 2 == 0, "llm.head_dim must be even (rotary embedding)")


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
  vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
  llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)
  image_start_id: int = QWEN_IMAGE_START_ID
  tokenizer: str = "qwen"  # "qwen" (tiktoken BPE) or "byte" (tiny configs)
  param_dtype: str = "float32"  # master weights
  vision_param_dtype: str | None = None  # None = param_dtype; "bfloat16" for a frozen ViT
  dtype: str = "bfloat16"  # compute / activations
  remat: str = "none"  # one of REMAT_POLICIES, applied per scanned layer
  attention_impl: str | None = None  # None (XLA picks), "xla" or "cudnn"

  @property
  def image_end_id(self) -> int:
    return self.image_start_id + 1

  @property
  def image_pad_id(self) -> int:
    return self.image_start_id + 2

  def replace(self, **kw: Any) -> "QwenVLConfig":
    return dataclasses.replace(self, **kw)

  def validate(self) -> "QwenVLConfig":
    self.vision.validate()
    self.llm.validate()
    _require(self.vision.output_dim == self.llm.hidden,
             f"vision.output_dim {self.vision.output_dim} != llm.hidden {self.llm.hidden}")
    _require(self.image_pad_id < self.llm.vocab_size,
             f"image ids {self.image_start_id}..{self.image_pad_id} outside vocab {self.llm.vocab_size}")
    _require(self.tokenizer in TOKENIZERS, f"tokenizer {self.tokenizer!r} not in {TOKENIZERS}")
    _require(self.remat in REMAT_POLICIES, f"remat {self.remat!r} not in {REMAT_POLICIES}")
    _require(self.attention_impl in (None, "xla", "cudnn"),
             f"attention_impl {self.attention_impl!r} not in (None, 'xla', 'cudnn')")
    return self

  # ---- HF config.json interop -------------------------------------------------------------

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> "QwenVLConfig":
    """Builds a config from a Qwen-VL `config.json` dict (model_type "qwen")."""
    if hf.get("model_type") != "qwen" or "visual" not in hf:
      raise ValueError(f"not a Qwen-VL config.json: model_type={hf.get('model_type')!r}, "
                       f"visual section {'present' if 'visual' in hf else 'missing'}")
    try:
      return cls._from_hf_config(hf, **overrides)
    except KeyError as e:
      raise ValueError(f"missing key {e.args[0]!r} (a Qwen-VL config.json has it)") from None
    except (TypeError, AttributeError) as e:
      raise ValueError(f"a value has the wrong type ({e})") from None

  @classmethod
  def _from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> "QwenVLConfig":
    v = hf["visual"]
    width = int(v["width"])
    vision = VisionConfig(
        image_size=int(v["image_size"]), patch_size=int(v["patch_size"]), width=width,
        layers=int(v["layers"]), heads=int(v["heads"]), mlp_dim=int(width * float(v["mlp_ratio"])),
        n_queries=int(v.get("n_queries", 256)), output_dim=int(v["output_dim"]))
    heads = int(hf["num_attention_heads"])
    llm = LLMConfig(
        vocab_size=int(hf["vocab_size"]), hidden=int(hf["hidden_size"]),
        layers=int(hf["num_hidden_layers"]), heads=heads,
        head_dim=int(hf.get("kv_channels", int(hf["hidden_size"]) // heads)),
        mlp_dim=int(hf["intermediate_size"]) // 2, rms_eps=float(hf["layer_norm_epsilon"]),
        rope_base=float(hf.get("rotary_emb_base", 10000)), seq_length=int(hf.get("seq_length", 2048)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
        use_dynamic_ntk=bool(hf.get("use_dynamic_ntk", True)),
        use_logn_attn=bool(hf.get("use_logn_attn", True)))
    if float(hf.get("rotary_pct", 1.0)) != 1.0:
      raise ValueError(f"rotary_pct={hf['rotary_pct']} is not supported (Qwen-VL uses 1.0)")
    if hf.get("tie_word_embeddings"):
      raise ValueError("tie_word_embeddings=true is not supported (Qwen-VL's lm_head is untied)")
    start = int(v.get("image_start_id", QWEN_IMAGE_START_ID))
    kind = hf.get("tokenizer_type")
    if kind is not None and kind not in TOKENIZER_TYPES:
      raise ValueError(f"tokenizer_type {kind!r} is not one of {sorted(TOKENIZER_TYPES)}")
    # written by to_hf_config; a config without it is taken as the release's tokenizer unless
    # its image ids are the byte tokenizer's
    tokenizer = TOKENIZER_TYPES[kind] if kind else (
        "byte" if start == BYTE_IMAGE_START_ID else "qwen")
    # weights stored in float32 (torch_dtype) compute in float32; the release's bf16 in bf16
    compute = "float32" if hf.get("torch_dtype") == "float32" else "bfloat16"
    return cls(vision=vision, llm=llm, image_start_id=start, tokenizer=tokenizer,
               **{"dtype": compute, **overrides}).validate()

  def to_hf_config(self) -> dict[str, Any]:
    """The `config.json` that the original Qwen-VL HF code (and vLLM's `qwen`) load."""
    v, m = self.vision, self.llm
    _require(v.resampler_head_dim == 128,
             f"HF Qwen-VL fixes resampler heads to output_dim // 128; this config uses head dim "
             f"{v.resampler_head_dim}")
    _require(v.pos_grid == 16, "HF Qwen-VL fixes the learned ViT positional grid to 16x16")
    mlp_ratio = v.mlp_dim / v.width
    _require(int(v.width * mlp_ratio) == v.mlp_dim, f"vision.mlp_dim {v.mlp_dim} not expressible as a ratio")
    if v.mlp_dim == 8192 and v.width == 1664:
      mlp_ratio = 4.9231  # the released value
    visual = dict(heads=v.heads, image_size=v.image_size, image_start_id=self.image_start_id,
                  layers=v.layers, mlp_ratio=mlp_ratio, output_dim=v.output_dim,
                  patch_size=v.patch_size, width=v.width)
    if v.n_queries != 256:
      visual["n_queries"] = v.n_queries
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                     "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "model_type": "qwen",
        "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0,
        "bf16": True, "fp16": False, "fp32": False,
        "hidden_size": m.hidden, "initializer_range": 0.02, "intermediate_size": 2 * m.mlp_dim,
        "kv_channels": m.head_dim, "layer_norm_epsilon": m.rms_eps,
        "max_position_embeddings": m.max_position_embeddings, "no_bias": True,
        "num_attention_heads": m.heads, "num_hidden_layers": m.layers, "onnx_safe": None,
        "rotary_emb_base": m.rope_base, "rotary_pct": 1.0, "scale_attn_weights": True,
        "seq_length": m.seq_length, "tie_word_embeddings": False,
        "tokenizer_type": {t: k for k, t in TOKENIZER_TYPES.items()}[self.tokenizer],
        "use_cache": True,
        "use_dynamic_ntk": m.use_dynamic_ntk, "use_flash_attn": False,
        "use_logn_attn": m.use_logn_attn, "visual": visual, "vocab_size": m.vocab_size,
    }


def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise ValueError(f"invalid model config: {msg}")


# ---- presets -----------------------------------------------------------------------------

def qwen_vl_7b() -> QwenVLConfig:
  """The released Qwen-VL / Qwen-VL-Chat (9.66B parameters)."""
  return QwenVLConfig()


def small() -> QwenVLConfig:
  """Mid-size model for benchmarks on one CPU/GPU (31M parameters, 224 px)."""
  return QwenVLConfig(
      vision=VisionConfig(image_size=224, width=256, layers=4, heads=4, mlp_dim=1024,
                          output_dim=512),
      llm=LLMConfig(vocab_size=BYTE_VOCAB_SIZE, hidden=512, layers=8, heads=8, head_dim=64,
                    mlp_dim=1408),
      image_start_id=BYTE_IMAGE_START_ID, tokenizer="byte")


def tiny() -> QwenVLConfig:
  """Seconds on CPU: 56 px images (4x4 patches), 16 image tokens, byte tokenizer."""
  return QwenVLConfig(
      vision=VisionConfig(image_size=56, width=64, layers=2, heads=4, mlp_dim=128,
                          n_queries=16, output_dim=256),
      llm=LLMConfig(vocab_size=BYTE_VOCAB_SIZE, hidden=256, layers=2, heads=4, head_dim=64,
                    mlp_dim=512),
      image_start_id=BYTE_IMAGE_START_ID, tokenizer="byte", dtype="float32")


def demo() -> QwenVLConfig:
  """The demo's model: tiny's LLM with 112 px images (8x8 patches) and 64 image tokens, so
  that an image token covers one patch (finer positions for boxes at about the same cost)."""
  t = tiny()
  return t.replace(vision=dataclasses.replace(t.vision, image_size=112, n_queries=64))


PRESETS = {"qwen_vl_7b": qwen_vl_7b, "small": small, "tiny": tiny, "demo": demo}


def get_preset(name: str) -> QwenVLConfig:
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]().validate()


HF_CONFIG_FILE = "config.json"


def read_hf_config(directory: str | os.PathLike) -> tuple[dict[str, Any], QwenVLConfig]:
  """(the dict, the model config) of an HF Qwen-VL folder's config.json; errors name the file
  and say what is wrong (missing file or key, invalid JSON, another architecture)."""
  path = os.path.join(directory, HF_CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{directory}: no {HF_CONFIG_FILE} (the HF folder's model config is "
                            "needed to know the architecture)")
  try:
    with open(path, encoding="utf-8") as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
                     ) from None
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e.reason})") from None
  if not isinstance(hf, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(hf).__name__}")
  try:
    return hf, QwenVLConfig.from_hf_config(hf)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
