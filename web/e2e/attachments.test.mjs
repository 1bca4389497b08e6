// Browser tests of attachments: Playwright (playwright-core) driving Debian's chromium against
// the real switchboard binary. alice attaches a PNG (made here, 600 × 400) through the file
// input with a caption; bob, in another browser context, sees its thumbnail (≤ 320 px, loaded
// from a signed link) and opens the full picture in the lightbox. alice sends a text file
// whose first upload request is dropped (the client asks where the upload stands and goes
// on); bob's chip downloads the same bytes. A file over one 5 MiB part resumes from the part
// the server kept. A picture that does not decode shows the server's refusal in the composer.
// A screenshot is saved under $WEB_E2E_OUT.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { Server, launchBrowser } from './server.mjs';
import { registerUser, openChatWith, openConversation } from './page.mjs';

const OUT = process.env.WEB_E2E_OUT || 'target/web-e2e';
const WAIT = 20_000;
const PART = 5 * 1024 * 1024;

let server;
let browser;

before(async () => {
  mkdirSync(OUT, { recursive: true });
  server = await Server.start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

// ---- a small PNG encoder (truecolour, 8 bits, no filter) ----

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'ascii');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

/** A width × height RGB picture: gradients and a checker, so it is not one colour. */
function png(width, height) {
  const row = width * 3 + 1;
  const raw = Buffer.alloc(row * height);
  for (let y = 0; y < height; y++) {
    raw[y * row] = 0;
    for (let x = 0; x < width; x++) {
      const i = y * row + 1 + x * 3;
      raw[i] = Math.floor((x * 255) / width);
      raw[i + 1] = Math.floor((y * 255) / height);
      raw[i + 2] = ((x >> 5) + (y >> 5)) % 2 ? 220 : 40;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // truecolour
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

// ---- the page ----

/** A fresh browser context with the page open and a user registered. */
const user = (name) => registerUser(browser, server.url, name, WAIT);

/** The timeline row carrying the attachment named `name`. */
function messageWith(u, name) {
  return u.page.getByTestId('message').filter({ has: u.page.locator(`[data-testid="attachment"][data-name="${name}"]`) });
}

/** Waits until the own message carrying `name` is stored (its tick past sending). */
async function stored(u, name) {
  await messageWith(u, name)
    .locator('[data-testid="tick"]:is([data-state="sent"], [data-state="delivered"], [data-state="read"])')
    .waitFor();
}

/** Waits for an image to finish loading; its natural size. */
async function loaded(img) {
  await img.waitFor();
  await img.evaluate(
    (el) =>
      new Promise((resolve, reject) => {
        const done = () => (el.naturalWidth > 0 ? resolve() : reject(new Error(`image did not load: ${el.src}`)));
        if (el.complete && el.getAttribute('src')) done();
        else {
          el.addEventListener('load', done, { once: true });
          el.addEventListener('error', () => reject(new Error(`image failed: ${el.src}`)), { once: true });
        }
      }),
  );
  return img.evaluate((el) => ({ width: el.naturalWidth, height: el.naturalHeight }));
}

/** Records the upload line's states and percents as the page shows them. */
async function watchUpload(page) {
  await page.evaluate(() => {
    const line = document.querySelector('[data-testid="upload"]');
    window.__uploadSeen = [];
    new MutationObserver(() => {
      if (!line.hidden) window.__uploadSeen.push(`${line.dataset.state}:${line.dataset.percent}`);
    }).observe(line, { attributes: true, subtree: true, childList: true, characterData: true });
  });
}

test('a picture: alice attaches it with a caption, bob sees the thumbnail and opens the full picture', async () => {
  const alice = await user('alice');
  const bob = await user('bob');
  await openChatWith(alice, 'bob');

  const picture = png(600, 400);
  await alice.page.getByTestId('composer').fill('the view from here');
  await alice.page.getByTestId('attach-input').setInputFiles({ name: 'view.png', mimeType: 'image/png', buffer: picture });
  await stored(alice, 'view.png');
  // The caption went with it, out of the composer; the upload line is gone.
  const mine = messageWith(alice, 'view.png');
  assert.match(await mine.innerText(), /the view from here/);
  assert.equal(await alice.page.getByTestId('composer').inputValue(), '');
  assert.equal(await alice.page.getByTestId('upload').isVisible(), false);
  // alice's own message shows the thumbnail too (from the upload's answer).
  const own = await loaded(mine.getByTestId('attachment-thumbnail'));
  assert.ok(own.width > 0 && own.width <= 320, `own thumbnail ${own.width}`);

  await openConversation(bob, 'alice');
  const row = messageWith(bob, 'view.png');
  await row.waitFor();
  assert.match(await row.innerText(), /the view from here/);
  const box = row.getByTestId('attachment');
  assert.equal(await box.getAttribute('data-kind'), 'picture');
  assert.equal(await box.getAttribute('data-type'), 'image/png');
  assert.equal(Number(await box.getAttribute('data-size')), picture.length);
  const thumb = row.getByTestId('attachment-thumbnail');
  // Sized before it loads: 600 × 400 fitted in 320 px.
  assert.equal(await thumb.getAttribute('width'), '320');
  assert.equal(await thumb.getAttribute('height'), '213');
  assert.equal(await thumb.getAttribute('alt'), 'view.png');
  assert.equal(await thumb.getAttribute('loading'), 'lazy');
  assert.match(await thumb.getAttribute('src'), /^\/v1\/attachments\/[^/]+\/thumbnail\?exp=\d+&sig=/);
  const small = await loaded(thumb);
  assert.ok(small.width > 0 && small.width <= 320, `thumbnail width ${small.width}`);
  assert.ok(small.height > 0 && small.height <= 320, `thumbnail height ${small.height}`);
  // A plain link opens the full picture in a new tab.
  const link = row.getByTestId('attachment-open');
  assert.equal(await link.getAttribute('target'), '_blank');
  assert.match(await link.getAttribute('href'), /^\/v1\/attachments\/[^/]+\?exp=\d+&sig=/);

  // Clicking the thumbnail opens the full picture over the page; Escape closes it.
  await thumb.click();
  const lightbox = bob.page.getByTestId('lightbox');
  await lightbox.waitFor();
  const full = await loaded(bob.page.getByTestId('lightbox-image'));
  assert.deepEqual(full, { width: 600, height: 400 });
  assert.equal(await bob.page.getByTestId('lightbox-open').getAttribute('href'), await link.getAttribute('href'));
  await bob.page.screenshot({ path: join(OUT, 'lightbox.png') });
  await bob.page.keyboard.press('Escape');
  await lightbox.waitFor({ state: 'hidden' });
  // And the close button.
  await thumb.click();
  await lightbox.waitFor();
  await bob.page.getByTestId('lightbox-close').click();
  await lightbox.waitFor({ state: 'hidden' });
  await bob.page.screenshot({ path: join(OUT, 'attachments.png'), fullPage: true });

  await alice.context.close();
  await bob.context.close();
});

test('a file: the first upload request is dropped and resumed; the chip downloads the same bytes', async () => {
  const carol = await user('carol');
  const dave = await user('dave');
  await openChatWith(carol, 'dave');

  // The first PATCH never reaches the server, as if the connection dropped.
  const seen = [];
  let dropped = false;
  await carol.page.route('**/v1/uploads/**', async (route) => {
    const r = route.request();
    seen.push(`${r.method()} ${r.headers()['upload-offset'] ?? ''}`.trim());
    if (r.method() === 'PATCH' && !dropped) {
      dropped = true;
      await route.abort('connectionreset');
    } else {
      await route.continue();
    }
  });
  const lines = Array.from({ length: 120 }, (_, i) => `line ${String(i + 1).padStart(3, '0')}: the quick brown fox jumps\n`);
  const notes = Buffer.from(lines.join(''));
  assert.ok(notes.length > 4000, `${notes.length} bytes`);
  await carol.page.getByTestId('attach-input').setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: notes });
  await stored(carol, 'notes.txt');
  assert.ok(dropped, 'a PATCH was dropped');
  assert.deepEqual(seen, ['PATCH 0', 'GET', 'PATCH 0'], seen.join(', '));

  await openConversation(dave, 'carol');
  const row = messageWith(dave, 'notes.txt');
  await row.waitFor();
  const box = row.getByTestId('attachment');
  assert.equal(await box.getAttribute('data-kind'), 'file');
  assert.equal(await row.getByTestId('attachment-thumbnail').count(), 0);
  const chip = row.getByTestId('attachment-file');
  assert.match(await chip.innerText(), /notes\.txt/);
  assert.equal(await row.getByTestId('attachment-size').innerText(), '4.2 KB');
  assert.equal(await chip.getAttribute('download'), 'notes.txt');
  const got = await chip.evaluate(async (a) => {
    const r = await fetch(a.href);
    const text = await r.text();
    return { status: r.status, length: new TextEncoder().encode(text).length, text };
  });
  assert.equal(got.status, 200);
  assert.equal(got.length, notes.length);
  assert.equal(got.text, notes.toString());
  // The body was empty: the message is the file alone, and the list says so.
  assert.match(
    await dave.page.getByTestId('conversation-item').filter({ hasText: 'carol' }).getByTestId('preview').innerText(),
    /📎 notes\.txt/,
  );

  await carol.context.close();
  await dave.context.close();
});

test('a file over one part resumes from the part the server kept; progress shows meanwhile', async () => {
  const erin = await user('erin');
  const frank = await user('frank');
  await openChatWith(erin, 'frank');

  const size = 2 * PART + 12_345;
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (i * 31 + (i >> 13)) & 0xff;
  const seen = [];
  let patches = 0;
  await erin.page.route('**/v1/uploads/**', async (route) => {
    const r = route.request();
    seen.push(`${r.method()} ${r.headers()['upload-offset'] ?? ''}`.trim());
    // The second slice is lost on the way: the first part is kept, the upload goes on at 5 MiB.
    if (r.method() === 'PATCH' && ++patches === 2) await route.abort('connectionreset');
    else await route.continue();
  });
  await watchUpload(erin.page);
  await erin.page.getByTestId('attach-input').setInputFiles({ name: 'data.bin', mimeType: 'application/octet-stream', buffer: data });
  await stored(erin, 'data.bin');
  assert.deepEqual(seen, ['PATCH 0', `PATCH ${PART}`, 'GET', `PATCH ${PART}`, `PATCH ${2 * PART}`], seen.join(', '));
  const shown = await erin.page.evaluate(() => window.__uploadSeen);
  assert.ok(shown.some((s) => s.startsWith('uploading:')), `upload line states: ${shown.join(' ')}`);
  assert.equal(await erin.page.getByTestId('upload').isVisible(), false);

  await openConversation(frank, 'erin');
  const row = messageWith(frank, 'data.bin');
  await row.waitFor();
  assert.equal(await row.getByTestId('attachment-size').innerText(), '10 MB');
  const length = await row.getByTestId('attachment-file').evaluate(async (a) => (await (await fetch(a.href)).arrayBuffer()).byteLength);
  assert.equal(length, size);

  await erin.context.close();
  await frank.context.close();
});

test('a picture that does not decode: the server refusal shows in the composer, nothing is sent', async () => {
  const grace = await user('grace');
  await user('henry').then((h) => h.context.close());
  await openChatWith(grace, 'henry');
  const broken = Buffer.concat([png(40, 40).subarray(0, 60), Buffer.alloc(200, 7)]);
  await grace.page.getByTestId('attach-input').setInputFiles({ name: 'broken.png', mimeType: 'image/png', buffer: broken });
  const line = grace.page.locator('[data-testid="upload"][data-state="failed"]');
  await line.waitFor();
  assert.match(await grace.page.getByTestId('upload-text').innerText(), /broken\.png was refused: .*decoded/);
  assert.equal(await grace.page.getByTestId('message').count(), 0);
  await grace.page.getByTestId('upload-cancel').click();
  await grace.page.getByTestId('upload').waitFor({ state: 'hidden' });
  await grace.context.close();
});
