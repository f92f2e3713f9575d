import { useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";

import { copyText } from "../clipboard";
import { renderMarkdown } from "../markdown";

export interface ToolCallView {
  id: string;
  name: string;
  arguments: string;
}

export interface ChatMessage {
  key: string;
  role: "user" | "assistant" | "system" | "error" | "tool";
  content: string;
  toolCalls?: ToolCallView[]; // an assistant's calls of tools, shown as such (not as text)
  toolCallId?: string; // a tool result: the call it answers
  finishReason?: string | null;
  streaming?: boolean;
  stats?: { ttftMs: number | null; tokensPerSecond: number | null; tokens: number | null; live: boolean };
}

const STICK_THRESHOLD_PX = 48; // this close to the bottom counts as "at the bottom"

function Markdown({ text }: { text: string }) {
  const html = useMemo(() => renderMarkdown(text), [text]);
  return <div class="markdown" dangerouslySetInnerHTML={{ __html: html }} />;
}

function Stats({ message }: { message: ChatMessage }) {
  const stats = message.stats;
  const parts: string[] = [];
  if (stats?.ttftMs != null) parts.push(`TTFT ${Math.round(stats.ttftMs)} ms`);
  if (stats?.tokensPerSecond != null) parts.push(`${stats.live ? "~" : ""}${stats.tokensPerSecond.toFixed(1)} tok/s`);
  if (stats?.tokens != null) parts.push(`${stats.tokens} tokens`);
  if (message.finishReason === "cancelled") parts.push("stopped");
  if (message.finishReason === "length") parts.push("max tokens reached");
  if (message.finishReason === "error") parts.push("interrupted");
  if (message.finishReason === "tool_calls") parts.push("tool calls");
  if (parts.length === 0) return null;
  return (
    <div class="stats" data-testid="reply-stats">
      {parts.join(" · ")}
    </div>
  );
}

function ToolCalls({ calls }: { calls: ToolCallView[] }) {
  return (
    <>
      {calls.map((call) => (
        <div class="tool-call" data-testid="tool-call" key={call.id}>
          <div class="tool-call-name">
            Calls <code>{call.name}</code>
          </div>
          <pre class="tool-call-arguments">{call.arguments}</pre>
        </div>
      ))}
    </>
  );
}

function Bubble({ message }: { message: ChatMessage }) {
  const label = { user: "You", assistant: "Assistant", system: "System", error: "Error", tool: "Tool result" }[message.role];
  return (
    <article class={`message ${message.role}`} data-role={message.role} aria-label={`${label} message`}>
      <div class="who">{label}</div>
      {message.role === "assistant" ? (
        <>
          {message.content !== "" && <Markdown text={message.content} />}
          {message.toolCalls && message.toolCalls.length > 0 && <ToolCalls calls={message.toolCalls} />}
          {message.streaming && message.content === "" && !message.toolCalls?.length && (
            <div class="typing" aria-label="Waiting for the reply" />
          )}
          <Stats message={message} />
        </>
      ) : (
        <div class="plain">{message.content}</div>
      )}
    </article>
  );
}

// Follows new text while the reader is at the bottom; stops when they scroll up; resumes when they return.
export function MessageList({ messages, empty }: { messages: ChatMessage[]; empty: string }) {
  const box = useRef<HTMLDivElement>(null);
  const [stuck, setStuck] = useState(true);
  const stuckRef = useRef(true);

  const onScroll = () => {
    const el = box.current!;
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < STICK_THRESHOLD_PX;
    stuckRef.current = atBottom;
    setStuck(atBottom);
  };

  // Sending a message (a new user message) always brings the reader back to the bottom.
  const lastUserKey = messages.findLast((m) => m.role === "user")?.key;
  useLayoutEffect(() => {
    stuckRef.current = true;
    setStuck(true);
  }, [lastUserKey]);

  useLayoutEffect(() => {
    if (stuckRef.current && box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [messages]);

  const toBottom = () => {
    const el = box.current!;
    el.scrollTop = el.scrollHeight;
    stuckRef.current = true;
    setStuck(true);
  };

  // One handler for every code block's copy button (the buttons come from rendered Markdown).
  useEffect(() => {
    const el = box.current!;
    const onClick = async (event: MouseEvent) => {
      const button = (event.target as HTMLElement).closest<HTMLButtonElement>("button.copy-code");
      const code = button?.closest(".code-block")?.querySelector("pre");
      if (!button || !code) return;
      const ok = await copyText(code.textContent ?? "");
      button.textContent = ok ? "Copied" : "Copy failed";
      window.setTimeout(() => (button.textContent = "Copy"), 1500);
    };
    el.addEventListener("click", onClick);
    return () => el.removeEventListener("click", onClick);
  }, []);

  return (
    <div class="messages-wrap">
      <div class="messages" ref={box} onScroll={onScroll} role="log" aria-live="polite" aria-label="Conversation">
        {messages.length === 0 ? <p class="empty">{empty}</p> : messages.map((m) => <Bubble key={m.key} message={m} />)}
      </div>
      {!stuck && (
        <button type="button" class="to-bottom" onClick={toBottom} aria-label="Scroll to the latest message">
          ↓ Latest
        </button>
      )}
    </div>
  );
}
