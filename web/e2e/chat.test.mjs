// Browser tests of the web client: Playwright (playwright-core) driving Debian's chromium
// against the real switchboard binary. Two users chat in two browser contexts: live messages,
// ticks turning to read, presence going offline when one closes, a server restart in the
// middle (the page reconnects, syncs and resends: nothing lost, nothing doubled), a third user
// who cannot see their conversation, and a group with system messages and read state. A
// screenshot of the chat view is saved under $WEB_E2E_OUT.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Server, launchBrowser } from './server.mjs';
import { registerUser, openChatWith, openConversation } from './page.mjs';

const OUT = process.env.WEB_E2E_OUT || 'target/web-e2e';
const WAIT = 20_000;

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

/** A fresh browser context with the page open and a user registered. */
const user = (name) => registerUser(browser, server.url, name, WAIT);

async function send(u, text) {
  await u.page.getByTestId('composer').fill(text);
  await u.page.getByTestId('composer').press('Enter');
}

function messages(u, text) {
  return u.page.getByTestId('message').filter({ hasText: text });
}

test('two users chat, see ticks, presence, a server restart, and a stranger sees nothing', async () => {
  const alice = await user('alice');
  const bob = await user('bob');

  await openChatWith(alice, 'bob');
  await send(alice, 'hello bob');
  // bob: the conversation appears live with an unread badge, then the message.
  const item = bob.page.getByTestId('conversation-item').filter({ hasText: 'alice' });
  await item.waitFor();
  await item.getByTestId('unread-badge').filter({ hasText: '1' }).waitFor();
  await item.click();
  await messages(bob, 'hello bob').waitFor();
  // alice's tick turns to read once bob has the chat open.
  await messages(alice, 'hello bob').locator('[data-testid="tick"][data-state="read"]').waitFor();

  // bob answers (so alice may watch his presence), and types first.
  await bob.page.getByTestId('composer').fill('hi al');
  await alice.page.getByTestId('typing').filter({ hasText: /typing/i }).waitFor();
  await bob.page.getByTestId('composer').press('Enter');
  await messages(alice, 'hi al').waitFor();
  await alice.page.locator('[data-testid="presence"][data-online="true"]').waitFor();
  await alice.page.screenshot({ path: join(OUT, 'chat.png'), fullPage: true });

  // bob closes: alice sees him offline, with a last-seen time.
  await bob.context.close();
  await alice.page.locator('[data-testid="presence"][data-online="false"]').waitFor();
  await alice.page.getByTestId('last-seen').waitFor();

  // The server restarts while alice sends: the page shows it is reconnecting, then resends.
  await server.stop();
  await alice.page.getByTestId('conn-state').filter({ hasText: /reconnecting|connecting|offline/i }).waitFor();
  await send(alice, 'sent while the server was down');
  await server.spawn();
  await alice.page.getByTestId('conn-state').filter({ hasText: /online/i }).waitFor();
  await messages(alice, 'sent while the server was down')
    .locator('[data-testid="tick"]:is([data-state="sent"], [data-state="delivered"], [data-state="read"])')
    .waitFor();

  // bob logs in again on a new page: everything once, in order.
  const bob2 = await browser.newContext();
  const page = await bob2.newPage();
  page.setDefaultTimeout(WAIT);
  await page.goto(server.url + '/');
  await page.getByTestId('username').fill('bob');
  await page.getByTestId('password').fill('bob password');
  await page.getByTestId('login').click();
  await page.getByTestId('conversation-item').filter({ hasText: 'alice' }).click();
  await page.getByTestId('message').filter({ hasText: 'sent while the server was down' }).waitFor();
  const texts = await page.getByTestId('message').allInnerTexts();
  const count = (t) => texts.filter((x) => x.includes(t)).length;
  assert.equal(count('hello bob'), 1, texts.join(' | '));
  assert.equal(count('hi al'), 1, texts.join(' | '));
  assert.equal(count('sent while the server was down'), 1, texts.join(' | '));
  const seqs = await page.getByTestId('message').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'in seq order');
  assert.equal(new Set(seqs).size, seqs.length, 'no seq twice');

  // carol sees neither the conversation nor, through the API, its messages.
  const carol = await user('carol');
  assert.equal(await carol.page.getByTestId('conversation-item').count(), 0);
  const conversationId = await page
    .getByTestId('conversation-item')
    .filter({ hasText: 'alice' })
    .getAttribute('data-conversation-id');
  const status = await carol.page.evaluate(async (id) => {
    const { token } = JSON.parse(sessionStorage.getItem('switchboard.session'));
    const r = await fetch(`/v1/conversations/${id}/messages`, { headers: { Authorization: `Bearer ${token}` } });
    return r.status;
  }, conversationId);
  assert.equal(status, 403);

  await bob2.close();
  await carol.context.close();
  await alice.context.close();
});

test('a group: create it, see its system messages, add a member, and who read a message', async () => {
  const dave = await user('dave');
  const erin = await user('erin');
  const frank = await user('frank');
  await dave.page.getByTestId('new-group-title').fill('Project X');
  await dave.page.getByTestId('new-group-members').fill('erin');
  await dave.page.getByTestId('new-group-create').click();
  await dave.page.getByTestId('system-message').first().waitFor();
  await dave.page.getByTestId('add-member-username').fill('frank');
  await dave.page.getByTestId('add-member').click();
  await dave.page.getByTestId('system-message').filter({ hasText: /frank/ }).waitFor();
  await send(dave, 'welcome all');
  for (const u of [erin, frank]) {
    await openConversation(u, 'Project X');
    await messages(u, 'welcome all').waitFor();
  }
  await dave.page.getByTestId('read-by').filter({ hasText: /2/ }).waitFor();
  await dave.page.screenshot({ path: join(OUT, 'group.png'), fullPage: true });
  for (const u of [dave, erin, frank]) await u.context.close();
});

test('accessible basics: labelled controls, Enter to send, visible focus, usable at 360 px', async () => {
  const context = await browser.newContext({ viewport: { width: 360, height: 740 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  await page.goto(server.url + '/');
  // Every form control is reachable by its label.
  await page.getByLabel(/username/i).first().fill('grace');
  await page.getByLabel(/password/i).first().fill('grace password');
  await page.getByTestId('register').click();
  await page.getByTestId('conn-state').filter({ hasText: /online/i }).waitFor();
  const fits = () => page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);
  assert.ok(await fits(), 'no horizontal scrolling at 360 px (list)');
  await page.getByTestId('new-chat-username').fill('alice');
  await page.getByTestId('new-chat-start').click();
  await page.getByTestId('composer').waitFor();
  assert.ok(await fits(), 'no horizontal scrolling at 360 px (chat)');
  // Focus is visible: the focused composer draws an outline or a box shadow.
  await page.getByTestId('composer').focus();
  const ring = await page.getByTestId('composer').evaluate((el) => {
    const s = getComputedStyle(el);
    return (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) || s.boxShadow !== 'none';
  });
  assert.ok(ring, 'the focused control shows a focus ring');
  await page.getByTestId('composer').fill('from a phone');
  await page.getByTestId('composer').press('Enter');
  await page
    .getByTestId('message')
    .filter({ hasText: 'from a phone' })
    .locator('[data-testid="tick"]:is([data-state="sent"], [data-state="delivered"], [data-state="read"])')
    .waitFor();
  await page.getByTestId('back').click();
  await page.getByTestId('conversation-item').filter({ hasText: 'alice' }).waitFor();
  await context.close();
});

test('history scrolls back a page at a time', async () => {
  const ivy = await user('ivy');
  const henry = await user('henry');
  await openChatWith(henry, 'ivy');
  for (let i = 1; i <= 60; i++) await send(henry, `note ${i}.`);
  await messages(henry, 'note 60.').locator('[data-testid="tick"]:not([data-state="sending"])').waitFor();
  await ivy.context.close();
  // ivy on a new device: the list, then the newest page, then older on request.
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  await page.goto(server.url + '/');
  await page.getByTestId('username').fill('ivy');
  await page.getByTestId('password').fill('ivy password');
  await page.getByTestId('login').click();
  await page.getByTestId('conversation-item').filter({ hasText: 'henry' }).click();
  await page.getByTestId('message').filter({ hasText: 'note 60.' }).waitFor();
  assert.equal(await page.getByTestId('message').count(), 50, 'the newest page');
  assert.equal(await page.getByTestId('message').filter({ hasText: 'note 1.' }).count(), 0);
  await page.getByTestId('load-older').click();
  await page.getByTestId('message').filter({ hasText: 'note 1.' }).waitFor();
  const seqs = await page.getByTestId('message').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
  assert.deepEqual(seqs, Array.from({ length: 60 }, (_, i) => i + 1), 'all 60, once, in order');
  assert.equal(await page.getByTestId('load-older').isVisible(), false, 'nothing older left');
  await context.close();
  await henry.context.close();
});
