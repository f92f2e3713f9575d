"""The OpenAI API: protocol models, the serving logic of chat and completions, chat templates, session turns."""
