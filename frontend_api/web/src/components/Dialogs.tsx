import { useEffect, useRef, useState } from "preact/hooks";
import type { ComponentChildren } from "preact";

// A native modal <dialog>: focus is trapped and Escape cancels, as a person expects.
function Modal(props: { label: string; onCancel: () => void; children: ComponentChildren }) {
  const dialog = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const el = dialog.current!;
    el.showModal();
    return () => el.close();
  }, []);
  return (
    <dialog
      ref={dialog}
      aria-label={props.label}
      onCancel={(e) => {
        e.preventDefault();
        props.onCancel();
      }}
    >
      {props.children}
    </dialog>
  );
}

export function ConfirmDelete(props: { title: string; onConfirm: () => void; onCancel: () => void }) {
  return (
    <Modal label="Delete chat" onCancel={props.onCancel}>
      <form
        method="dialog"
        onSubmit={(e) => {
          e.preventDefault();
          props.onConfirm();
        }}
      >
        <h2>Delete this chat?</h2>
        <p>
          “{props.title}” and all its messages will be deleted. This cannot be undone.
        </p>
        <div class="dialog-actions">
          <button type="button" onClick={props.onCancel}>
            Cancel
          </button>
          <button type="submit" class="danger">
            Delete
          </button>
        </div>
      </form>
    </Modal>
  );
}

export function ApiKeyDialog(props: {
  message: string | null;
  current: string | null;
  onSave: (key: string | null) => void;
  onCancel: (() => void) | null;
}) {
  const [key, setKey] = useState(props.current ?? "");
  return (
    <Modal label="API key" onCancel={() => props.onCancel?.()}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          props.onSave(key.trim() || null);
        }}
      >
        <h2>API key</h2>
        <p>This server needs an API key. It is kept in this browser only (local storage) and sent in a header, never in a URL.</p>
        {props.message && (
          <p class="error-text" role="alert">
            {props.message}
          </p>
        )}
        <label>
          Key
          <input
            type="password"
            name="api_key"
            autoComplete="off"
            placeholder="sk-llms-..."
            value={key}
            autoFocus
            onInput={(e) => setKey(e.currentTarget.value)}
          />
        </label>
        <div class="dialog-actions">
          {props.current && (
            <button type="button" onClick={() => props.onSave(null)}>
              Forget key
            </button>
          )}
          {props.onCancel && (
            <button type="button" onClick={props.onCancel}>
              Cancel
            </button>
          )}
          <button type="submit" class="primary" disabled={!key.trim()}>
            Save
          </button>
        </div>
      </form>
    </Modal>
  );
}
