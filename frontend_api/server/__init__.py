"""The HTTP server: the app factory, middleware, graceful drain, error handlers and the web UI mount (top layer)."""
