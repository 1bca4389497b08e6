// Build and unit-test configuration of the web client: `vite build` writes web/dist/
// (index.html + assets/ with relative URLs, served by the switchboard server at /);
// `vite` (dev) proxies /v1 (REST and the WebSocket) to a local server; Vitest runs only the
// unit tests under src/ (the browser tests in e2e/ run with node --test).
import { defineConfig } from 'vitest/config';

const target = process.env.SWITCHBOARD_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
  base: './',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
  },
  server: {
    proxy: {
      '/v1': { target, ws: true, changeOrigin: false },
    },
  },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
  },
});
