// DOM helpers. Every value from the API is attacker-controlled (URLs, payloads, response
// excerpts, event types, idempotency keys): it becomes a text node or an attribute value, never
// markup. Nothing in the dashboard assigns innerHTML or outerHTML.

/** Builds an element: `attributes` are set as attributes (class, type, aria-*, data-*), except
 *  `on*` keys, which are listeners; children are nodes or strings (text nodes). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      node.addEventListener(name.slice(2), value);
    } else {
      node.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(node, children);
  return node;
}

/** Appends nodes and strings (as text) to `node`, flattening arrays and skipping null. */
export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces a node's children. */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** Looks up an element the page must have. */
export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`the page has no #${id}`);
  return node;
}

/** A value for a table cell: absent values show as a dash. */
export function show(value) {
  return value === undefined || value === null || value === '' ? '—' : String(value);
}

const numbers = new Intl.NumberFormat('en', { maximumFractionDigits: 1 });

/** A count or rate for people. */
export function number(value) {
  return typeof value === 'number' && Number.isFinite(value) ? numbers.format(value) : '—';
}

/** An RFC 3339 time as a <time> element (UTC, as the API gives it). */
export function time(value) {
  if (!value) return '—';
  const text = String(value).replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  return el('time', { datetime: String(value) }, text);
}

/** A table's head: one column heading per name. */
export function tableHead(headings) {
  return el('thead', {}, el('tr', {}, headings.map((heading) => el('th', { scope: 'col' }, heading))));
}

/** A section titled by the h2 that labels it; `id` names the title. */
export function titledSection(id, title, ...children) {
  return el('section', { 'aria-labelledby': id }, el('h2', { id }, title), ...children);
}

/** A status word as a badge; the class comes from a fixed list, never from the value. */
const BADGES = new Set(['pending', 'delivering', 'retrying', 'delivered', 'failed', 'closed', 'open', 'half_open',
  'enabled', 'disabled']);
export function badge(word) {
  const known = BADGES.has(word) ? word : 'unknown';
  return el('span', { class: `badge badge-${known}` }, show(word));
}

/** Says something to screen readers and sighted users in the page's status line. */
export function announce(message, kind = 'info') {
  const status = byId('status');
  status.className = `status status-${kind}`;
  replace(status, message);
}

let dialogReturn = null;

/** Asks for confirmation in the page's modal dialog; resolves true when confirmed. Focus goes to
 *  Cancel (the safe choice) and comes back to where it was. */
export function confirmAction(title, message, confirmLabel) {
  const dialog = byId('confirm-dialog');
  replace(byId('confirm-title'), title);
  replace(byId('confirm-message'), message);
  replace(byId('confirm-ok'), confirmLabel);
  dialogReturn = document.activeElement;
  return new Promise((resolve) => {
    const finish = (answer) => {
      dialog.removeEventListener('close', onClose);
      byId('confirm-ok').removeEventListener('click', onOk);
      byId('confirm-cancel').removeEventListener('click', onCancel);
      if (dialog.open) dialog.close();
      if (dialogReturn && dialogReturn.isConnected) dialogReturn.focus();
      resolve(answer);
    };
    const onOk = () => finish(true);
    const onCancel = () => finish(false);
    const onClose = () => finish(false);
    byId('confirm-ok').addEventListener('click', onOk);
    byId('confirm-cancel').addEventListener('click', onCancel);
    dialog.addEventListener('close', onClose);
    dialog.showModal();
    byId('confirm-cancel').focus();
  });
}
