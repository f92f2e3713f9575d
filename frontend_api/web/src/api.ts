// The REST side of the front-end: models and sessions (docs/SESSIONS.md). The API key, when auth is on, goes
// in the Authorization header, never in a URL.

export interface ChatSettingsValues {
  temperature: number;
  top_p: number;
  top_k: number;
  max_tokens: number;
  repetition_penalty: number;
}

export interface Session {
  id: string;
  title: string;
  model: string | null;
  system_prompt: string | null;
  created_at: number;
  updated_at: number;
}

export interface StoredMessage {
  id: number;
  role: string;
  content: string;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  finish_reason: string | null;
  tool_calls?: StoredToolCall[] | null; // an assistant turn's tool calls
  tool_call_id?: string | null; // a tool turn's: the call it answers
}

export interface StoredToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null,
  ) {
    super(message);
  }
}

// Relative to the page, so a proxy may serve the front-end under a path prefix.
export function apiUrl(path: string): string {
  return new URL(path.replace(/^\//, ""), document.baseURI).toString();
}

export class Api {
  constructor(private readonly apiKey: string | null) {}

  private async request(method: string, path: string, body?: unknown): Promise<Response> {
    const headers: Record<string, string> = {};
    if (this.apiKey) headers["Authorization"] = `Bearer ${this.apiKey}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(apiUrl(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) {
      let message = `${method} ${path}: HTTP ${response.status}`;
      let code: string | null = null;
      try {
        const error = (await response.json()).error;
        message = error.message ?? message;
        code = error.code ?? null;
      } catch {
        // not an OpenAI error body: keep the status line
      }
      throw new ApiError(response.status, message, code);
    }
    return response;
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    return (await this.request(method, path, body)).json() as Promise<T>;
  }

  async models(): Promise<string[]> {
    const list = await this.json<{ data: { id: string }[] }>("GET", "v1/models");
    return list.data.map((model) => model.id);
  }

  async sessions(limit: number): Promise<{ data: Session[]; has_more: boolean }> {
    return this.json("GET", `v1/sessions?limit=${limit}`);
  }

  async messages(sessionId: string): Promise<StoredMessage[]> {
    const list = await this.json<{ data: StoredMessage[] }>(
      "GET",
      `v1/sessions/${encodeURIComponent(sessionId)}/messages?limit=1000`,
    );
    return list.data;
  }

  async rename(sessionId: string, title: string): Promise<Session> {
    return this.json("PATCH", `v1/sessions/${encodeURIComponent(sessionId)}`, { title });
  }

  async remove(sessionId: string): Promise<void> {
    await this.request("DELETE", `v1/sessions/${encodeURIComponent(sessionId)}`);
  }

  // The export is a download; fetched here (the key rides in a header, which a plain link cannot carry).
  async exportBlob(sessionId: string): Promise<Blob> {
    return (await this.request("GET", `v1/sessions/${encodeURIComponent(sessionId)}/export`)).blob();
  }
}
