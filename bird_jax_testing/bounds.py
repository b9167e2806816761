"""The bounds the parity tests assert and the docs quote, in one place: the tests import them,
and `bench/check_figures.py --only parity` checks that the docs quote these numbers."""

# max |difference| of the JAX model and the PyTorch references (tiny config, fp32): LLM
# logits, visual features, the whole model with images, dynamic NTK + logn
# (tests/test_model_parity.py; docs/model.md)
MODEL_PARITY = 1e-4
BICUBIC_RESIZE = 1e-5  # the bicubic resize vs torch's F.interpolate (same test file)

# 3 train steps on 1 device vs a (data 2, fsdp 2, tensor 2) mesh: losses and parameters
# (tests/test_train.py; docs/training.md)
SHARDED_STEPS = 1e-5

# LoRA (tests/test_lora.py; docs/training.md): merged weights vs the adapted model's logits,
# and exported adapters attached to the base again
LORA_MERGED = 1e-5
LORA_ATTACHED = 1e-6

# caption metrics vs pycocoevalcap (tests/test_metrics_parity.py; docs/evaluation.md):
# BLEU/ROUGE-L/CIDEr, and the METEOR score's required agreement with the official jar
CAPTION_METRICS = 1e-6
METEOR_SCORE = 0.005

# two processes: a survivor ends at most this long after the heartbeat timeout once its peer
# is killed (tests/test_multihost.py; docs/training.md)
HEARTBEAT_NOTICE_S = 10
