// What every browser test does with the page: a user registered in a browser context of their
// own, a direct chat opened by username, a conversation opened from the list.

/** A fresh browser context (its own storage) with the page at `url` open and `name` registered. */
export async function registerUser(browser, url, name, wait) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  const page = await context.newPage();
  page.setDefaultTimeout(wait);
  await page.goto(url + '/');
  await page.getByTestId('username').fill(name);
  await page.getByTestId('password').fill(`${name} password`);
  await page.getByTestId('register').click();
  await page.getByTestId('conn-state').filter({ hasText: /online/i }).waitFor();
  return { name, context, page };
}

export async function openChatWith(u, other) {
  await u.page.getByTestId('new-chat-username').fill(other);
  await u.page.getByTestId('new-chat-start').click();
  await u.page.getByTestId('composer').waitFor();
}

export async function openConversation(u, title) {
  await u.page.getByTestId('conversation-item').filter({ hasText: title }).first().click();
  await u.page.getByTestId('composer').waitFor();
}
