"""What the tests and benchmarks share: synthetic records and captions, crafted image files,
and an independent PyTorch implementation of Qwen-VL to compare against. Not part of the
library: `bird_jax` never imports it."""
