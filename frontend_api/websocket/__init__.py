"""The WebSocket chat protocol (/v1/chat/ws): typed frames and the per-connection handler."""
