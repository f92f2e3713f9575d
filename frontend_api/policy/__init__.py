"""Who may call and how much: API-key authentication and limits."""
