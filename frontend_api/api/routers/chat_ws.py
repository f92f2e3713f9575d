"""/v1/chat/ws: chat over a WebSocket
(frames: frontend_api/websocket/frames.py; the connection: frontend_api/websocket/socket.py)."""

from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket

from frontend_api.api.deps import chat_serving
from frontend_api.websocket.socket import ChatSocket, authenticate_socket

router = APIRouter(tags=["chat"])


def origin_allowed(websocket: WebSocket) -> bool:
    """Browsers send Origin on WebSockets and CORS does not apply to them: accept the page's own origin and the
    configured CORS origins only, so another site cannot drive a chat from a visitor's browser."""
    origin = websocket.headers.get("origin")
    if origin is None:  # not a browser
        return True
    if origin in websocket.app.state.settings.cors_origins:
        return True
    return urlsplit(origin).netloc == websocket.headers.get("host")


@router.websocket("/v1/chat/ws")
async def chat_ws(websocket: WebSocket) -> None:
    if not origin_allowed(websocket):
        await websocket.close(code=1008, reason="origin not allowed")
        return
    await websocket.accept()
    principal = await authenticate_socket(websocket, websocket.app.state.settings)
    if principal is not None:
        await ChatSocket(websocket, principal, lambda: chat_serving(websocket.app.state, principal)).run()
