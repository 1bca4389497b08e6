// The real switchboard binary for browser tests: started on a free loopback port with a data
// dir of its own, restartable on the same port and data (a server restart seen from the page).
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { chromium } from 'playwright-core';

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export class Server {
  static async start() {
    const server = new Server(await freePort(), mkdtempSync(join(tmpdir(), 'sb-web-e2e-')));
    await server.spawn();
    return server;
  }

  constructor(port, dir) {
    this.port = port;
    this.dir = dir;
    this.url = `http://127.0.0.1:${port}`;
    this.child = null;
  }

  async spawn() {
    const bin = process.env.SWITCHBOARD_BIN;
    if (!bin) throw new Error('SWITCHBOARD_BIN is not set (scripts/web e2e sets it)');
    this.child = spawn(bin, ['serve'], {
      env: {
        ...process.env,
        SWITCHBOARD_HTTP_ADDR: `127.0.0.1:${this.port}`,
        SWITCHBOARD_DATA_DIR: join(this.dir, 'data'),
        SWITCHBOARD_REGISTER_IP_PER_HOUR: '1000',
        RUST_LOG: 'warn',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise((_, reject) =>
      this.child.once('exit', (code) => reject(new Error(`switchboard exited early (${code})`))),
    );
    await Promise.race([this.ready(), exited]);
  }

  async ready() {
    for (let i = 0; i < 600; i++) {
      try {
        const r = await fetch(`${this.url}/readyz`);
        if (r.ok) return;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('switchboard did not become ready in 60 s');
  }

  /** SIGTERM (graceful drain) and wait for the exit. */
  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    const child = this.child;
    child.removeAllListeners('exit');
    const done = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await done;
  }

  async restart() {
    await this.stop();
    await this.spawn();
  }
}

/** Debian's chromium (never a downloaded browser), headless, as every browser test runs it. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
