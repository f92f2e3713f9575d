// Chat settings and the API key, remembered per browser (localStorage).

import type { ChatSettingsValues } from "./api";
import type { ChatSettingsFrame } from "./chatSocket";

export interface Settings extends ChatSettingsValues {
  model: string; // "" = the server's first model
  system_prompt: string;
}

// repetition_penalty 1.0 is neutral: the default `llm` engine rejects any other value (docs/API.md).
export const DEFAULT_SETTINGS: Settings = {
  model: "",
  temperature: 0.7,
  top_p: 1,
  top_k: 0,
  max_tokens: 512,
  repetition_penalty: 1,
  system_prompt: "",
};

const SETTINGS_KEY = "llmserve.settings";
const API_KEY = "llmserve.apiKey";

export function loadSettings(): Settings {
  try {
    const stored = JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? "{}") as Partial<Settings>;
    return { ...DEFAULT_SETTINGS, ...pickKnown(stored) };
  } catch {
    return { ...DEFAULT_SETTINGS }; // unreadable: start afresh
  }
}

function pickKnown(stored: Partial<Settings>): Partial<Settings> {
  const known: Partial<Record<keyof Settings, unknown>> = {};
  for (const key of Object.keys(DEFAULT_SETTINGS) as (keyof Settings)[]) {
    if (typeof stored[key] === typeof DEFAULT_SETTINGS[key]) known[key] = stored[key];
  }
  return known as Partial<Settings>;
}

export function saveSettings(settings: Settings): void {
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
}

export function toFrame(settings: Settings): ChatSettingsFrame {
  return {
    ...(settings.model ? { model: settings.model } : {}),
    ...(settings.system_prompt.trim() ? { system_prompt: settings.system_prompt } : {}),
    temperature: settings.temperature,
    top_p: settings.top_p,
    top_k: settings.top_k,
    max_tokens: settings.max_tokens,
    repetition_penalty: settings.repetition_penalty,
  };
}

export function loadApiKey(): string | null {
  return localStorage.getItem(API_KEY) || null;
}

export function saveApiKey(key: string | null): void {
  if (key) localStorage.setItem(API_KEY, key);
  else localStorage.removeItem(API_KEY);
}
