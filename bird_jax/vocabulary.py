"""The Med-GRIT vocabulary, in one place: tasks, modalities, the special-token strings and the
label that marks a position as not supervised.

Every layer imports these from here (data, datagen, metrics, evaluation, the tokenizer).
The modality of a sample is the prefix of its image file name before the first "_"
(``ct_0001.png`` -> ``ct``), as BiRD's evaluation takes it (docs/evaluation.md).
"""

from __future__ import annotations

import os

# The four tasks: visual grounding, referring object classification, referring captioning,
# medical image analysis.
TASKS: tuple[str, ...] = ("vg", "roc", "rc", "mia")
TASK_NAMES = {"vg": "VG", "roc": "ROC", "rc": "RC", "mia": "MIA"}

# The 8 modality keys in BiRD's table order, and their display names.
MODALITIES: tuple[str, ...] = (
    "ct", "mr", "x", "pet", "endoscopy", "dermoscopy", "fundus", "ultrasound")
MODALITY_NAMES = {"ct": "CT", "mr": "MR", "x": "X-ray", "pet": "PET", "endoscopy": "Endoscopy",
                  "dermoscopy": "Dermoscopy", "fundus": "Fundus", "ultrasound": "Ultrasound"}
# Modalities that have ROC samples in Med-GRIT-Test30k (the paper's ROC average uses these).
ROC_PAPER_MODALITIES: tuple[str, ...] = (
    "ct", "mr", "x", "endoscopy", "dermoscopy", "ultrasound")

# Qwen-VL's special tokens (their ids are the tokenizer's: bird_jax/tokenizer.py).
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
REF, REF_END, BOX, BOX_END = "<ref>", "</ref>", "<box>", "</box>"
QUAD, QUAD_END, IMG, IMG_END, IMGPAD = "<quad>", "</quad>", "<img>", "</img>", "<imgpad>"
# The special tokens a message's text may contain; the others are control tokens that
# message text never produces (docs/tokenizer.md).
IMAGE_TAGS = frozenset((REF, REF_END, BOX, BOX_END, QUAD, QUAD_END, IMG, IMG_END, IMGPAD))

# The training label of a position the loss ignores (every other label is a token id); the
# chat format writes it, packing pads with it, the loss masks it.
IGNORE_ID = -100


def modality_of(image: str) -> str | None:
  """Modality key of an image file name or record id, or None when its prefix is not one of
  the 8 keys."""
  prefix = os.path.basename(image).split("_", 1)[0]
  return prefix if prefix in MODALITIES else None
