// The WebSocket chat (docs/SESSIONS.md, protocol 1), with automatic reconnect.
// When auth is on, the key is sent as the first frame ({"type": "auth"}); it never goes in the URL.

export interface DoneFrame {
  type: "done";
  finish_reason: "stop" | "length" | "cancelled" | "tool_calls";
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
  session_id: string | null;
  stats: { ttft_ms: number | null; tokens_per_second: number | null } | null;
}

export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
  param?: string;
}

export type ServerFrame =
  | { type: "ready"; protocol: number }
  | { type: "delta"; content: string }
  | { type: "tool_call"; index: number; id: string; name: string; arguments: string }
  | DoneFrame
  | ErrorFrame
  | { type: "ping" }
  | { type: "pong" };

export type ConnectionState =
  | { status: "connecting" }
  | { status: "connected" }
  | { status: "retrying"; inSeconds: number }
  | { status: "refused"; message: string }; // authentication failed: no retry until a new key

export interface ChatSettingsFrame {
  model?: string;
  system_prompt?: string;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  max_tokens?: number;
  repetition_penalty?: number;
}

const POLICY_VIOLATION = 1008; // the server's close code for a failed authentication
const MAX_BACKOFF_MS = 10_000;

export class ChatSocket {
  private socket: WebSocket | null = null;
  private attempt = 0;
  private retryTimer: number | undefined;
  private closed = false;
  private lastError: ErrorFrame | null = null;
  private authenticated = false; // the server said "ready"

  constructor(
    private readonly apiKey: string | null,
    private readonly onFrame: (frame: ServerFrame) => void,
    private readonly onState: (state: ConnectionState) => void,
  ) {
    this.connect();
  }

  private url(): string {
    const url = new URL("v1/chat/ws", document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.toString();
  }

  private connect(): void {
    this.onState({ status: "connecting" });
    this.lastError = null;
    this.authenticated = false;
    const socket = (this.socket = new WebSocket(this.url()));
    socket.onopen = () => {
      if (this.apiKey) socket.send(JSON.stringify({ type: "auth", api_key: this.apiKey }));
    };
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data as string) as ServerFrame;
      if (frame.type === "ready") {
        this.attempt = 0;
        this.authenticated = true;
        this.onState({ status: "connected" });
      }
      if (frame.type === "error") this.lastError = frame;
      this.onFrame(frame);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket || this.closed) return;
      this.socket = null;
      this.authenticated = false;
      if (event.code === POLICY_VIOLATION) {
        this.onState({ status: "refused", message: this.lastError?.message ?? (event.reason || "refused") });
        return;
      }
      const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** this.attempt);
      this.attempt += 1;
      this.onState({ status: "retrying", inSeconds: Math.ceil(delay / 1000) });
      this.retryTimer = window.setTimeout(() => this.connect(), delay);
    };
  }

  get ready(): boolean {
    return this.authenticated && this.socket?.readyState === WebSocket.OPEN;
  }

  chat(content: string, sessionId: string | null, settings: ChatSettingsFrame): boolean {
    return this.send({ type: "chat", content, ...(sessionId ? { session_id: sessionId } : {}), settings });
  }

  stop(): boolean {
    return this.send({ type: "stop" });
  }

  private send(frame: object): boolean {
    if (!this.ready) return false;
    this.socket!.send(JSON.stringify(frame));
    return true;
  }

  close(): void {
    this.closed = true;
    window.clearTimeout(this.retryTimer);
    this.socket?.close();
    this.socket = null;
  }
}
