import { useCallback, useEffect, useMemo, useRef, useState } from "preact/hooks";

import { Api, ApiError, type Session, type StoredMessage } from "./api";
import { ChatSocket, type ConnectionState, type ServerFrame } from "./chatSocket";
import { Composer } from "./components/Composer";
import { ApiKeyDialog, ConfirmDelete } from "./components/Dialogs";
import { GearIcon, MenuIcon } from "./components/icons";
import { type ChatMessage, MessageList } from "./components/MessageList";
import { SettingsPanel } from "./components/SettingsPanel";
import { Sidebar } from "./components/Sidebar";
import { loadApiKey, loadSettings, saveApiKey, saveSettings, type Settings, toFrame } from "./settings";

const PAGE = 50; // sessions listed per "Show more"

// The reply being generated: where its text goes, and its clock for the live figures.
interface Pending {
  key: string;
  view: number; // which chat view it belongs to (switching chats starts a new view)
  sessionId: string | null; // null: a new chat, its id comes with "done"
  sentAt: number;
  firstAt: number | null;
  deltas: number;
}

let keys = 0;
const nextKey = () => `m${++keys}`;

function fromStored(message: StoredMessage): ChatMessage {
  const known = ["user", "assistant", "system", "tool"] as const;
  const role = known.find((r) => r === message.role) ?? "system";
  const tokens = message.role === "assistant" ? message.completion_tokens : null;
  return {
    key: `s${message.id}`,
    role,
    content: message.content,
    toolCalls: message.tool_calls?.map((c) => ({ id: c.id, name: c.function.name, arguments: c.function.arguments })),
    toolCallId: message.tool_call_id ?? undefined,
    finishReason: message.finish_reason,
    stats: tokens != null ? { ttftMs: null, tokensPerSecond: null, tokens, live: false } : undefined,
  };
}

function statusText(state: ConnectionState): string {
  switch (state.status) {
    case "connected":
      return "Connected";
    case "connecting":
      return "Connecting…";
    case "retrying":
      return `Reconnecting in ${state.inSeconds} s`;
    case "refused":
      return "Not connected";
  }
}

export function App() {
  const [apiKey, setApiKey] = useState(loadApiKey());
  const [authOn, setAuthOn] = useState(false);
  const [keyPrompt, setKeyPrompt] = useState<{ message: string | null; cancellable: boolean } | null>(null);
  const [apiReady, setApiReady] = useState(false); // /v1/models answered: the key (if any) works
  const [models, setModels] = useState<string[]>([]);
  const [settings, setSettings] = useState(loadSettings());
  const [showSettings, setShowSettings] = useState(false);
  const [sidebarOpen, setSidebarOpen] = useState(false);
  const [sessions, setSessions] = useState<Session[]>([]);
  const [hasMore, setHasMore] = useState(false);
  const [limit, setLimit] = useState(PAGE);
  const [currentId, setCurrentId] = useState<string | null>(null);
  const [messages, setMessages] = useState<ChatMessage[]>([]);
  const [generating, setGenerating] = useState(false);
  const [connection, setConnection] = useState<ConnectionState>({ status: "connecting" });
  const [toDelete, setToDelete] = useState<Session | null>(null);
  const [notice, setNotice] = useState<string | null>(null);

  const api = useMemo(() => new Api(apiKey), [apiKey]);
  const socket = useRef<ChatSocket | null>(null);
  const pending = useRef<Pending | null>(null);
  const view = useRef(0);

  const failed = useCallback((error: unknown) => {
    if (error instanceof ApiError && error.status === 401) {
      setAuthOn(true);
      setApiReady(false);
      setKeyPrompt({ message: apiKey ? error.message : null, cancellable: false });
    } else {
      setNotice(error instanceof Error ? error.message : String(error));
    }
  }, [apiKey]);

  const refreshSessions = useCallback(async () => {
    try {
      const page = await api.sessions(limit);
      setSessions(page.data);
      setHasMore(page.has_more);
    } catch (error) {
      failed(error);
    }
  }, [api, limit, failed]);

  // The model list doubles as the check that the key (if auth is on) works; retried while the server is away.
  const [modelsAttempt, setModelsAttempt] = useState(0);
  useEffect(() => {
    setApiReady(false);
    let retry: number | undefined;
    api.models().then(
      (ids) => {
        setModels(ids);
        setApiReady(true);
        setNotice(null);
        if (apiKey) setAuthOn(true);
      },
      (error) => {
        failed(error);
        if (!(error instanceof ApiError && error.status === 401)) {
          retry = window.setTimeout(() => setModelsAttempt((n) => n + 1), Math.min(10_000, 1000 * 2 ** modelsAttempt));
        }
      },
    );
    return () => window.clearTimeout(retry);
  }, [api, modelsAttempt]);

  useEffect(() => {
    if (apiReady) refreshSessions();
  }, [apiReady, refreshSessions]);

  const updatePending = (change: (message: ChatMessage) => ChatMessage) => {
    const key = pending.current?.key;
    setMessages((list) => list.map((m) => (m.key === key ? change(m) : m)));
  };

  const endPending = () => {
    pending.current = null;
    setGenerating(false);
  };

  const onFrame = (frame: ServerFrame) => {
    const reply = pending.current;
    if (frame.type === "delta" && reply) {
      const now = performance.now();
      reply.firstAt ??= now;
      reply.deltas += 1;
      const seconds = (now - reply.firstAt) / 1000;
      updatePending((m) => ({
        ...m,
        content: m.content + frame.content,
        // Live figures until "done" brings the server's: each delta is about one token.
        stats: { ttftMs: reply.firstAt! - reply.sentAt, tokensPerSecond: seconds > 0.2 ? reply.deltas / seconds : null, tokens: null, live: true },
      }));
    } else if (frame.type === "tool_call" && reply) {
      const call = { id: frame.id, name: frame.name, arguments: frame.arguments };
      updatePending((m) => ({ ...m, toolCalls: [...(m.toolCalls ?? []), call] }));
    } else if (frame.type === "done" && reply) {
      updatePending((m) => ({
        ...m,
        streaming: false,
        finishReason: frame.finish_reason,
        stats: {
          ttftMs: frame.stats?.ttft_ms ?? m.stats?.ttftMs ?? null,
          tokensPerSecond: frame.stats?.tokens_per_second ?? null,
          tokens: frame.usage?.completion_tokens ?? null,
          live: false,
        },
      }));
      if (reply.view === view.current && reply.sessionId === null && frame.session_id) setCurrentId(frame.session_id);
      endPending();
      refreshSessions();
    } else if (frame.type === "error") {
      const text = `${frame.message}${frame.param ? ` (${frame.param})` : ""}`;
      if (reply) {
        // A chat that fails ends with this frame (no "done"): drop the empty reply, show why.
        const key = reply.key;
        setMessages((list) => [
          ...list.filter((m) => m.key !== key || m.content !== "" || (m.toolCalls?.length ?? 0) > 0),
          { key: nextKey(), role: "error", content: text },
        ]);
        endPending();
      } else {
        setNotice(text);
      }
    }
  };
  const onFrameRef = useRef(onFrame);
  onFrameRef.current = onFrame;

  const onConnection = (state: ConnectionState) => {
    setConnection(state);
    if (state.status !== "connected" && pending.current) {
      updatePending((m) => ({ ...m, streaming: false, finishReason: "error" }));
      endPending();
    }
    if (state.status === "refused") setKeyPrompt({ message: state.message, cancellable: false });
  };
  const onConnectionRef = useRef(onConnection);
  onConnectionRef.current = onConnection;

  useEffect(() => {
    if (!apiReady) return;
    const chat = new ChatSocket(apiKey, (f) => onFrameRef.current(f), (s) => onConnectionRef.current(s));
    socket.current = chat;
    return () => chat.close();
  }, [apiReady, apiKey]);

  const send = (text: string) => {
    const key = nextKey();
    if (!socket.current?.chat(text, currentId, toFrame(settings))) return;
    pending.current = { key, view: view.current, sessionId: currentId, sentAt: performance.now(), firstAt: null, deltas: 0 };
    setMessages((list) => [
      ...list,
      { key: nextKey(), role: "user", content: text },
      { key, role: "assistant", content: "", streaming: true },
    ]);
    setGenerating(true);
  };

  const leaveView = () => {
    if (pending.current) socket.current?.stop();
    view.current += 1;
    setSidebarOpen(false);
  };

  const select = async (id: string) => {
    leaveView();
    const mine = view.current;
    setCurrentId(id);
    setMessages([]);
    try {
      const stored = await api.messages(id);
      if (view.current === mine) setMessages(stored.map(fromStored));
    } catch (error) {
      failed(error);
    }
  };

  const newChat = () => {
    leaveView();
    setCurrentId(null);
    setMessages([]);
  };

  const rename = async (id: string, title: string) => {
    try {
      const updated = await api.rename(id, title);
      setSessions((list) => list.map((s) => (s.id === id ? updated : s)));
    } catch (error) {
      failed(error);
    }
  };

  const confirmDelete = async () => {
    const session = toDelete!;
    setToDelete(null);
    try {
      await api.remove(session.id);
      if (session.id === currentId) newChat();
      await refreshSessions();
    } catch (error) {
      failed(error);
    }
  };

  const exportSession = async () => {
    if (!currentId) return;
    try {
      const blob = await api.exportBlob(currentId);
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = `${currentId}.json`;
      link.click();
      window.setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    } catch (error) {
      failed(error);
    }
  };

  const changeSettings = (next: Settings) => {
    setSettings(next);
    saveSettings(next);
  };

  const saveKey = (key: string | null) => {
    saveApiKey(key);
    setKeyPrompt(null);
    setApiKey(key);
    if (!key) setKeyPrompt({ message: null, cancellable: false });
  };

  const title = sessions.find((s) => s.id === currentId)?.title ?? (currentId ? "Chat" : "New chat");
  const empty = apiReady ? "Send a message to start. Replies stream in as they are generated." : "Connecting to the server…";

  return (
    <div class={`app${showSettings ? " with-settings" : ""}`}>
      <Sidebar
        sessions={sessions}
        currentId={currentId}
        hasMore={hasMore}
        open={sidebarOpen}
        onNew={newChat}
        onSelect={select}
        onRename={rename}
        onDelete={setToDelete}
        onMore={() => setLimit((n) => n + PAGE)}
        onApiKey={authOn ? () => setKeyPrompt({ message: null, cancellable: true }) : null}
      />
      {sidebarOpen && <div class="scrim" onClick={() => setSidebarOpen(false)} />}
      <main class="chat">
        <header class="chat-head">
          <button type="button" class="icon menu" aria-label="Show chats" onClick={() => setSidebarOpen(true)}>
            <MenuIcon />
          </button>
          <h1 class="chat-title" title={title}>
            {title}
          </h1>
          <span class={`connection ${connection.status}`} data-status={connection.status} role="status">
            {authOn && !apiReady ? "API key needed" : statusText(connection)}
          </span>
          {currentId && (
            <button type="button" class="export" onClick={exportSession}>
              Export
            </button>
          )}
          <button
            type="button"
            class="icon"
            aria-label="Settings"
            aria-expanded={showSettings}
            onClick={() => setShowSettings(!showSettings)}
          >
            <GearIcon />
          </button>
        </header>
        {notice && (
          <div class="notice" role="alert">
            <span>{notice}</span>
            <button type="button" class="icon" aria-label="Dismiss" onClick={() => setNotice(null)}>
              ✕
            </button>
          </div>
        )}
        <MessageList messages={messages} empty={empty} />
        <Composer
          generating={generating}
          canSend={connection.status === "connected"}
          onSend={send}
          onStop={() => socket.current?.stop()}
        />
      </main>
      {showSettings && (
        <SettingsPanel settings={settings} models={models} onChange={changeSettings} onClose={() => setShowSettings(false)} />
      )}
      {toDelete && <ConfirmDelete title={toDelete.title} onConfirm={confirmDelete} onCancel={() => setToDelete(null)} />}
      {keyPrompt && (
        <ApiKeyDialog
          message={keyPrompt.message}
          current={apiKey}
          onSave={saveKey}
          onCancel={keyPrompt.cancellable ? () => setKeyPrompt(null) : null}
        />
      )}
    </div>
  );
}
