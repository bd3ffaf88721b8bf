"""The OpenAI-compatible buyer API: `/v1/models`, `/v1/chat/completions`, `/v1/completions`."""
