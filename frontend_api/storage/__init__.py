"""Where things are stored: API keys, chat sessions and their messages (SQLModel; SQLite or PostgreSQL)."""
