import { defineConfig } from "vite";

// Relative asset URLs, so the UI also works behind a proxy that serves the front-end under a path prefix.
// `npm run dev` proxies the API to a running `make serve` (LLMSERVE_URL, default http://127.0.0.1:8000).
const api = process.env.LLMSERVE_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  base: "./",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false },
  server: {
    proxy: {
      "/v1": { target: api, ws: true, changeOrigin: true },
    },
  },
});
