import { useState } from "preact/hooks";

interface Props {
  generating: boolean;
  canSend: boolean;
  onSend: (text: string) => void;
  onStop: () => void;
}

// Enter sends, Shift+Enter starts a new line (and Enter while an IME composes text does neither).
export function Composer({ generating, canSend, onSend, onStop }: Props) {
  const [text, setText] = useState("");
  const send = () => {
    if (!text.trim() || generating || !canSend) return;
    onSend(text);
    setText("");
  };
  return (
    <form
      class="composer"
      onSubmit={(e) => {
        e.preventDefault();
        send();
      }}
    >
      <textarea
        aria-label="Message"
        placeholder="Message (Enter to send, Shift+Enter for a new line)"
        rows={2}
        value={text}
        onInput={(e) => setText(e.currentTarget.value)}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            send();
          }
        }}
      />
      {generating ? (
        <button type="button" class="stop danger" onClick={onStop}>
          Stop
        </button>
      ) : (
        <button type="submit" class="send primary" disabled={!canSend || !text.trim()}>
          Send
        </button>
      )}
    </form>
  );
}
