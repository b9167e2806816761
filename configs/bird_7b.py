"""BiRD's recipe: Qwen-VL-Chat fine-tuned on Med-GRIT (paper Section 4.1).

    .venv/bin/python train.py --config configs/bird_7b.py \\
        --config.init.hf=/path/to/Qwen-VL-Chat --config.data.shards=data/medgrit/train \\
        --config.train.workdir=runs/bird_7b --config.train.steps=N

Init from Qwen-VL-Chat (HF folder, converted on the fly), ViT frozen (the resampler and the
whole LLM trained), AdamW lr 2e-5 with cosine decay and 1% warmup, weight decay 0.1,
b2 0.95, global batch 128 sequences of 2048 tokens, packing, bf16 compute with fp32 masters.
Set train.steps to 2 epochs of your data: steps = ceil(2 x packed rows / 128).
This file targets one 8-GPU node (8 x 16 micro-batch rows = 128); see bird_7b_4gpu.py.
"""

from bird_jax.train.config import default_config


def get_config():
  c = default_config()
  c.model.preset = "qwen_vl_7b"
  c.model.overrides = {"dtype": "bfloat16", "param_dtype": "float32",
                       "vision_param_dtype": "bfloat16", "remat": "full"}
  c.init.hf = ""  # required: the Qwen-VL-Chat folder
  c.freeze = [r"^visual\.(?!attn_pool\.)"]
  c.data.max_len = 2048
  c.data.packing = "segments"
  c.data.label_mode = "qwen_vl"
  c.data.num_epochs = 0  # the step budget decides (2 epochs: see above)
  c.data.max_images_per_row = 4
  c.data.batch_size = 16  # rows per micro-step, over all devices
  c.data.worker_count = 8
  c.optim.grad_accum = 8  # 16 x 8 = 128 sequences per optimizer step
  c.optim.lr = 2e-5
  c.optim.schedule = "cosine"
  c.optim.warmup_ratio = 0.01
  c.optim.weight_decay = 0.1
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.95, 1e-8
  c.optim.clip_norm = 1.0
  c.step.loss_chunk = 512
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1  # FSDP over all devices
  c.train.steps = 3750  # ~2 epochs of 240k QA packed ~2 images / row: set it for your data
  c.train.log_every = 10
  c.train.ckpt_every = 500
  c.train.keep = 3
  c.train.workdir = "runs/bird_7b"
  c.train.peak_tflops = 312.0  # A100 bf16 dense, for MFU
  return c
