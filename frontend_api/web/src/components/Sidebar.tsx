import { useRef, useState } from "preact/hooks";

import type { Session } from "../api";
import { PencilIcon, TrashIcon } from "./icons";

interface Props {
  sessions: Session[];
  currentId: string | null;
  hasMore: boolean;
  open: boolean;
  onNew: () => void;
  onSelect: (id: string) => void;
  onRename: (id: string, title: string) => void;
  onDelete: (session: Session) => void;
  onMore: () => void;
  onApiKey: (() => void) | null;
}

function SessionItem(props: { session: Session; current: boolean } & Pick<Props, "onSelect" | "onRename" | "onDelete">) {
  const { session, current } = props;
  const [editing, setEditing] = useState(false);
  const [title, setTitle] = useState(session.title);

  const saved = useRef(false); // Enter, then the blur as the input goes away: rename once
  const save = () => {
    if (saved.current) return;
    saved.current = true;
    setEditing(false);
    const trimmed = title.trim();
    if (trimmed && trimmed !== session.title) props.onRename(session.id, trimmed);
    else setTitle(session.title);
  };

  if (editing) {
    return (
      <li class="session editing">
        <input
          class="rename-input"
          aria-label="New title"
          value={title}
          maxLength={200}
          autoFocus
          onInput={(e) => setTitle(e.currentTarget.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter") save();
            if (e.key === "Escape") {
              saved.current = true;
              setTitle(session.title);
              setEditing(false);
            }
          }}
          onBlur={save}
        />
      </li>
    );
  }
  return (
    <li class={`session${current ? " current" : ""}`} data-session-id={session.id}>
      <button
        type="button"
        class="session-title"
        aria-current={current ? "page" : undefined}
        onClick={() => props.onSelect(session.id)}
        title={session.title}
      >
        {session.title}
      </button>
      <button
        type="button"
        class="icon"
        aria-label={`Rename ${session.title}`}
        title="Rename"
        onClick={() => {
          setTitle(session.title);
          saved.current = false;
          setEditing(true);
        }}
      >
        <PencilIcon />
      </button>
      <button type="button" class="icon" aria-label={`Delete ${session.title}`} title="Delete" onClick={() => props.onDelete(session)}>
        <TrashIcon />
      </button>
    </li>
  );
}

export function Sidebar(props: Props) {
  return (
    <nav class={`sidebar${props.open ? " open" : ""}`} aria-label="Chats">
      <button type="button" class="new-chat primary" onClick={props.onNew}>
        + New chat
      </button>
      <ul class="session-list">
        {props.sessions.map((session) => (
          <SessionItem
            key={`${session.id}:${session.title}`}
            session={session}
            current={session.id === props.currentId}
            onSelect={props.onSelect}
            onRename={props.onRename}
            onDelete={props.onDelete}
          />
        ))}
      </ul>
      {props.hasMore && (
        <button type="button" class="more" onClick={props.onMore}>
          Show more
        </button>
      )}
      {props.onApiKey && (
        <button type="button" class="api-key-button" onClick={props.onApiKey}>
          API key…
        </button>
      )}
    </nav>
  );
}
