// Model text -> safe HTML: marked (GitHub-flavoured Markdown), highlight.js for code blocks, then DOMPurify,
// which removes scripts, event handlers and javascript: URLs that a reply may contain (it is untrusted text).

import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import c from "highlight.js/lib/languages/c";
import cpp from "highlight.js/lib/languages/cpp";
import css from "highlight.js/lib/languages/css";
import go from "highlight.js/lib/languages/go";
import java from "highlight.js/lib/languages/java";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import markdown from "highlight.js/lib/languages/markdown";
import python from "highlight.js/lib/languages/python";
import rust from "highlight.js/lib/languages/rust";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";
import { Marked, type Tokens } from "marked";

const languages = { bash, c, cpp, css, go, java, javascript, json, markdown, python, rust, sql, typescript, xml, yaml };
for (const [name, language] of Object.entries(languages)) hljs.registerLanguage(name, language);

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

function highlight(code: string, lang: string): { html: string; label: string } {
  if (lang && hljs.getLanguage(lang)) return { html: hljs.highlight(code, { language: lang }).value, label: lang };
  if (lang) return { html: escapeHtml(code), label: lang };
  const guessed = hljs.highlightAuto(code);
  return { html: guessed.value, label: guessed.language ?? "text" };
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    // A code block with its language and a copy button (clicks are handled by the message list).
    code({ text, lang }: Tokens.Code): string {
      const { html, label } = highlight(text, (lang ?? "").trim().split(/\s+/)[0].toLowerCase());
      return (
        `<div class="code-block"><div class="code-head"><span>${escapeHtml(label)}</span>` +
        `<button type="button" class="copy-code" aria-label="Copy code">Copy</button></div>` +
        `<pre><code class="hljs">${html}</code></pre></div>`
      );
    },
  },
});

// Links open in a new tab without handing it this page (window.opener).
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.getAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

// No forms or inputs from a model either (a fake login form is phishing, even without script).
const FORBID_TAGS = ["form", "input", "textarea", "select", "style"];

export function renderMarkdown(text: string): string {
  const html = marked.parse(text, { async: false });
  return DOMPurify.sanitize(html, { USE_PROFILES: { html: true }, ADD_ATTR: ["target"], FORBID_TAGS });
}
