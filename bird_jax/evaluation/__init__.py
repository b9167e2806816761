"""Evaluation as BiRD does it (docs/evaluation.md): test files -> batched greedy generation ->
BiRD-format JSONL predictions -> per-task x per-modality scores, plots and a box gallery.

- `testsets`: finding and reading the per-task test files (Med-GRIT JSON);
- `predictions`: the prediction file format {id, image, question, annotation, response};
- `runner`: model mode (prompts, pixels, `bird_jax.generate`, decoding);
- `scoring`: one task's predictions -> BiRD-compatible and corrected scores (through
  `bird_jax.metrics`), plus the constant-answer baselines;
- `gallery`: the HTML gallery of samples with boxes drawn;
- `cli`: `eval.py`.
"""
