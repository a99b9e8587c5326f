import { defineConfig } from "vite";

// No React plugin: esbuild compiles the JSX (automatic runtime). Everything is bundled into
// dist/ (no CDN), which crates/ccf-admin embeds into the binary.
export default defineConfig({
  esbuild: { jsx: "automatic" },
  build: { outDir: "dist", assetsDir: "assets", sourcemap: false, chunkSizeWarningLimit: 1024 },
  server: {
    proxy: { "/api": { target: process.env.CCF_ADMIN_URL ?? "http://127.0.0.1:8088", changeOrigin: false } },
  },
  test: { include: ["src/**/*.test.ts"] },
});
