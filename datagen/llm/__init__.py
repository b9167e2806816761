"""Text backends: template (offline, default) and openai (any OpenAI-compatible server)."""
