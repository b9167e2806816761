"""bird_jax: BiRD (refer-and-ground biomedical multimodal LLM) on JAX."""

__version__ = "0.1.0"


def load_pretrained(*args, **kwargs):
  """Model, tokenizer and config from an HF Qwen-VL folder or an Orbax checkpoint in one call
  (bird_jax.pretrained.load_pretrained; imported on use, so `import bird_jax` stays light)."""
  from bird_jax.pretrained import load_pretrained as load

  return load(*args, **kwargs)
