// Attachments in the timeline: a picture is its thumbnail (sized before it loads, so the
// timeline does not jump) that opens the full picture in the lightbox, with a plain link to
// open it in a new tab; any other file is a chip (name, size) that downloads it. The lightbox
// is the page's <dialog> (Escape and the close button close it).

import { fitBox, formatSize, isPicture } from '../attachments';
import type { Attachment } from '../protocol';
import { attr, byId, el, reconcile, text } from './dom';

const SVG = 'http://www.w3.org/2000/svg';

/** A file outline, drawn (no icon font or emoji needed). */
function fileIcon(): SVGSVGElement {
  const svg = document.createElementNS(SVG, 'svg');
  for (const [k, v] of Object.entries({
    class: 'icon att-icon',
    viewBox: '0 0 24 24',
    width: '16',
    height: '16',
    'aria-hidden': 'true',
    focusable: 'false',
    fill: 'none',
    stroke: 'currentColor',
    'stroke-width': '2',
    'stroke-linecap': 'round',
    'stroke-linejoin': 'round',
  })) {
    svg.setAttribute(k, v);
  }
  const path = document.createElementNS(SVG, 'path');
  path.setAttribute('d', 'M13 2H6a2 2 0 0 0-2 2v16a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2V9zM13 2v7h7');
  svg.append(path);
  return svg;
}

function createAttachment(a: Attachment): HTMLElement {
  if (isPicture(a)) {
    const box = el('div', { class: 'att att-picture', 'data-testid': 'attachment', 'data-kind': 'picture' });
    const open = el('button', { type: 'button', class: 'att-thumb', 'data-action': 'lightbox' });
    open.append(el('img', { 'data-testid': 'attachment-thumbnail', loading: 'lazy', decoding: 'async' }));
    const caption = el('div', { class: 'att-caption' });
    caption.append(
      el('span', { class: 'att-name' }),
      el('span', { class: 'att-size', 'data-testid': 'attachment-size' }),
      el('a', { class: 'att-open', 'data-testid': 'attachment-open', target: '_blank', rel: 'noopener' }, 'Open'),
    );
    box.append(open, caption);
    return box;
  }
  const box = el('div', { class: 'att att-file-box', 'data-testid': 'attachment', 'data-kind': 'file' });
  const chip = el('a', { class: 'att-file', 'data-testid': 'attachment-file' });
  chip.append(
    fileIcon(),
    el('span', { class: 'att-name' }),
    el('span', { class: 'att-size', 'data-testid': 'attachment-size' }),
  );
  box.append(chip);
  return box;
}

function updateAttachment(box: HTMLElement, a: Attachment): void {
  attr(box, 'data-attachment-id', a.id);
  attr(box, 'data-type', a.type);
  attr(box, 'data-size', String(a.size));
  attr(box, 'data-name', a.name);
  const size = formatSize(a.size);
  text(box.querySelector('.att-name')!, a.name);
  text(box.querySelector('.att-size')!, size);
  if (isPicture(a)) {
    const open = box.querySelector<HTMLButtonElement>('.att-thumb')!;
    attr(open, 'title', `${a.name} (${size}): open`);
    open.dataset.attachmentId = a.id;
    const img = box.querySelector<HTMLImageElement>('img')!;
    const fit = fitBox(a.width, a.height);
    attr(img, 'width', fit ? String(fit.width) : null);
    attr(img, 'height', fit ? String(fit.height) : null);
    attr(img, 'alt', a.name);
    attr(img, 'src', a.thumbnail_url ?? null);
    const link = box.querySelector<HTMLAnchorElement>('.att-open')!;
    attr(link, 'href', a.url);
    attr(link, 'aria-label', `Open ${a.name} in a new tab`);
    return;
  }
  const chip = box.querySelector<HTMLAnchorElement>('.att-file')!;
  attr(chip, 'href', a.url);
  attr(chip, 'download', a.name);
  attr(chip, 'title', `Download ${a.name} (${size})`);
}

/** Draws `list` into `container` (kept in place by id, so loaded pictures stay loaded). */
export function renderAttachments(container: HTMLElement, list: Attachment[]): void {
  reconcile(
    container,
    list,
    (a) => `${a.id}|${isPicture(a) ? 'p' : 'f'}`,
    (a) => createAttachment(a),
    (box, a) => updateAttachment(box, a),
  );
}

/** The full picture over the page. */
export class Lightbox {
  private readonly dialog = byId<HTMLDialogElement>('lightbox');
  private readonly image = byId<HTMLImageElement>('lightbox-image');
  private readonly name = byId('lightbox-name');
  private readonly open = byId<HTMLAnchorElement>('lightbox-open');
  private shown: string | null = null;

  constructor(onError: (attachmentId: string) => void) {
    byId('lightbox-close').addEventListener('click', () => this.close());
    // A click on the backdrop (the dialog itself, outside its content) closes it too.
    this.dialog.addEventListener('click', (ev) => {
      if (ev.target === this.dialog) this.close();
    });
    this.dialog.addEventListener('close', () => {
      this.shown = null;
      this.image.removeAttribute('src');
    });
    this.image.addEventListener('error', () => {
      if (this.shown && this.image.getAttribute('src')) onError(this.shown);
    });
  }

  get openId(): string | null {
    return this.shown;
  }

  show(a: Attachment): void {
    this.shown = a.id;
    this.update(a);
    if (!this.dialog.open) this.dialog.showModal();
  }

  /** Fresh links of the picture shown (after its link expired). */
  update(a: Attachment): void {
    if (this.shown !== a.id) return;
    attr(this.image, 'width', a.width ? String(a.width) : null);
    attr(this.image, 'height', a.height ? String(a.height) : null);
    attr(this.image, 'alt', a.name);
    attr(this.image, 'src', a.url);
    attr(this.open, 'href', a.url);
    text(this.name, a.name);
  }

  close(): void {
    if (this.dialog.open) this.dialog.close();
  }
}
