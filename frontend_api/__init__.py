"""OpenAI-compatible HTTP front-end of llmserve (FastAPI). Build the app with `frontend_api.app.create_app`."""
