"""eval.py's settings: one `ml_collections.ConfigDict` schema with BiRD's protocol as defaults
(docs/evaluation.md). configs/eval_bird.py returns it; every field can be overridden with
--config.a.b=value; a tuple field takes the flag once per item (--config.tasks=vg
--config.tasks=roc) or a Python tuple (--config.tasks="('vg', 'roc')")."""

import ml_collections

# BiRD's inference settings: the most new tokens per task (greedy, min_new_tokens 1)
MAX_NEW_TOKENS = {"vg": 80, "roc": 80, "rc": 80, "mia": 100}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.out = "runs/eval"  # report.md/json, plots/, gallery/, predictions/ (model mode)
  c.tasks = ("vg", "roc", "rc", "mia")  # model mode: which test files to run
  c.limit = 0  # samples per task, spread over each test file (0 = all)
  c.images = ()  # image folders (model mode also looks in --data,
  #                --data/images and --data/../images: datagen's OUT/medgrit + OUT/images)
  # generation
  c.batch_size = 8
  c.max_new_tokens = ml_collections.ConfigDict(dict(MAX_NEW_TOKENS))
  c.min_new_tokens = 1
  c.temperature = 0.0  # 0 = greedy (BiRD); > 0 samples
  c.top_p = 1.0
  c.seed = 0
  c.buckets = ()  # prompt widths (() = 32, 48, 64, 96, ... up to seq_length)
  # model
  c.step = -1  # checkpoint step (-1 = latest)
  c.model_preset = ""  # use this preset instead of the checkpoint's model config
  c.dtype = ""  # compute dtype override, e.g. "bfloat16" ("" = the checkpoint's)
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # scoring and report
  c.meteor = "python"  # "python" (ours, no Java) or "java" (the official jar)
  c.spice = "auto"  # "auto": official SPICE when CoreNLP 3.6.0 is present, else the labelled
  #                   approximation; "java", "approx" or "none"
  c.workers = 1  # METEOR processes
  c.gallery = 16  # samples per task in gallery/index.html (0 = no gallery)
  c.paper_table = ""  # JSON {task: {modality: percent}}: the paper's per-modality numbers
  return c
