"""The terminal chat about one image (``python -m bird_jax.chat``, ``__main__.py``): an app over
bird_jax/assistant.py; the ChatML format it speaks is bird_jax/chatml.py."""
