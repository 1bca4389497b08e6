// Small DOM helpers for the views: element lookup by id, element creation, and a keyed
// reconcile that updates rows in place (so focus, scroll and test locators stay stable).

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`#${id} missing from index.html`);
  return e as T;
}

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  text?: string,
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Sets an attribute only when it changes (null removes it). */
export function attr(e: Element, name: string, value: string | null): void {
  if (value === null) {
    if (e.hasAttribute(name)) e.removeAttribute(name);
  } else if (e.getAttribute(name) !== value) {
    e.setAttribute(name, value);
  }
}

export function text(e: Element, value: string): void {
  if (e.textContent !== value) e.textContent = value;
}

export function show(e: HTMLElement, visible: boolean): void {
  if (e.hidden === visible) e.hidden = !visible;
}

/**
 * Makes `container`'s children the rows of `items`, in order: a row whose key was there is
 * updated in place, a new one created, a gone one removed. `rowOf` finds the row of a key.
 */
export function reconcile<T>(
  container: HTMLElement,
  items: T[],
  key: (item: T) => string,
  create: (item: T) => HTMLElement,
  update: (row: HTMLElement, item: T) => void,
): void {
  const existing = new Map<string, HTMLElement>();
  for (const child of Array.from(container.children)) {
    const k = (child as HTMLElement).dataset.key;
    if (k !== undefined) existing.set(k, child as HTMLElement);
  }
  let cursor: Element | null = container.firstElementChild;
  const keep = new Set<string>();
  for (const item of items) {
    const k = key(item);
    keep.add(k);
    let row = existing.get(k);
    if (!row) {
      row = create(item);
      row.dataset.key = k;
    }
    update(row, item);
    if (row !== cursor) container.insertBefore(row, cursor);
    else cursor = cursor.nextElementSibling;
  }
  for (const [k, row] of existing) if (!keep.has(k)) row.remove();
}
