import { DEFAULT_SETTINGS, type Settings } from "../settings";

interface Props {
  settings: Settings;
  models: string[];
  onChange: (settings: Settings) => void;
  onClose: () => void;
}

type NumberField = "temperature" | "top_p" | "top_k" | "max_tokens" | "repetition_penalty";

// Bounds as the server validates them (frontend_api/storage/models.py SessionSettings).
const NUMBER_FIELDS: { field: NumberField; label: string; min: number; max?: number; step: number; help: string }[] = [
  { field: "temperature", label: "Temperature", min: 0, max: 2, step: 0.05, help: "0 is greedy" },
  { field: "top_p", label: "Top p", min: 0.01, max: 1, step: 0.01, help: "nucleus sampling" },
  { field: "top_k", label: "Top k", min: -1, step: 1, help: "0 or -1: off" },
  { field: "max_tokens", label: "Max tokens", min: 1, step: 1, help: "longest reply" },
  { field: "repetition_penalty", label: "Repetition penalty", min: 0.01, step: 0.05, help: "1 is neutral" },
];

export function SettingsPanel({ settings, models, onChange, onClose }: Props) {
  const set = (patch: Partial<Settings>) => onChange({ ...settings, ...patch });
  return (
    <aside class="settings" aria-label="Settings">
      <div class="settings-head">
        <h2>Settings</h2>
        <button type="button" class="icon" aria-label="Close settings" onClick={onClose}>
          ✕
        </button>
      </div>
      <label>
        Model
        <select value={settings.model} onChange={(e) => set({ model: e.currentTarget.value })}>
          <option value="">Server default{models[0] ? ` (${models[0]})` : ""}</option>
          {models.map((id) => (
            <option key={id} value={id}>
              {id}
            </option>
          ))}
        </select>
      </label>
      {NUMBER_FIELDS.map(({ field, label, min, max, step, help }) => (
        <label key={field}>
          <span>
            {label} <small>{help}</small>
          </span>
          <input
            type="number"
            name={field}
            min={min}
            max={max}
            step={step}
            value={settings[field]}
            onChange={(e) => {
              const typed = e.currentTarget.valueAsNumber;
              if (!Number.isFinite(typed)) return;
              const value = Math.min(max ?? Infinity, Math.max(min, typed));
              set({ [field]: field === "top_k" || field === "max_tokens" ? Math.round(value) : value });
            }}
          />
        </label>
      ))}
      <label>
        System prompt
        <textarea
          rows={4}
          value={settings.system_prompt}
          placeholder="Used for new chats (stored with the chat); for an open chat, for the next message only"
          onChange={(e) => set({ system_prompt: e.currentTarget.value })}
        />
      </label>
      <button type="button" onClick={() => onChange({ ...DEFAULT_SETTINGS })}>
        Reset to defaults
      </button>
    </aside>
  );
}
