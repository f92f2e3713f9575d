"""The `llmserve` command: prepares models, starts Triton and the OpenAI front-end."""
