"""`python -m bird_jax.serve`: a web page and an OpenAI-compatible endpoint over a model.

__main__.py (the command), app.py (HTTP: page, API, errors), batcher.py (concurrent requests ->
batched generation), static/ (the page).
"""
