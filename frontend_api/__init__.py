"""OpenAI-compatible HTTP front-end of llmserve (FastAPI). Build the app with `frontend_api.server.app.create_app`."""
