"""The main job on the embedded default: datagen -> train -> eval -> table (`python -m
bird_jax_demo`; bird_jax_demo/run.py)."""
