"""bird_jax: BiRD (refer-and-ground biomedical multimodal LLM) on JAX."""

__version__ = "0.1.0"
