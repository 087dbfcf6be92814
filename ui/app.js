// Kapsel's dashboard: sign-in, the views and the router (`#/overview`, `#/endpoints`,
// `#/events?…`, `#/events/evt_…`). Plain modules, no build step, nothing from another origin.

import { ApiError, describe, forgetToken, storeToken, storedToken, whenRefused, whoAmI } from './api.js';
import { announce, byId, replace } from './dom.js';
import * as endpoints from './endpoints.js';
import * as events from './events.js';
import * as event from './event.js';
import * as overview from './overview.js';

/** Who is signed in: `{principal, tenant_id, key_id, scopes, guessed?}`, or null. */
let session = null;

/** What the views may offer: actions need the operator token or a key with `write`. */
export function canWrite() {
  return session !== null && (session.principal === 'operator' || session.scopes.includes('write'));
}

export function isOperator() {
  return session?.principal === 'operator';
}

const VIEWS = {
  overview: { section: 'view-overview', module: overview, title: 'Overview' },
  endpoints: { section: 'view-endpoints', module: endpoints, title: 'Endpoints' },
  events: { section: 'view-events', module: events, title: 'Events' },
  event: { section: 'view-event', module: event, title: 'Event' },
};
let current = null;

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = hash.split('?', 2);
  const parameters = new URLSearchParams(query);
  const match = /^events\/(evt_[0-9A-Za-z]+)$/.exec(path);
  if (match) return { view: 'event', argument: match[1], parameters };
  return { view: VIEWS[path] ? path : 'overview', argument: null, parameters };
}

function showOnly(sectionId) {
  for (const section of document.querySelectorAll('main > .view')) section.hidden = section.id !== sectionId;
}

async function route() {
  if (!session) return;
  const { view, argument, parameters } = parseHash();
  if (current && current !== VIEWS[view]) current.module.leave?.();
  current = VIEWS[view];
  replace(byId('status'));
  showOnly(current.section);
  document.title = `${current.title} · Kapsel dashboard`;
  for (const link of document.querySelectorAll('#nav a')) {
    const active = link.dataset.view === (view === 'event' ? 'events' : view);
    if (active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  await current.module.enter({ argument, parameters, canWrite: canWrite(), isOperator: isOperator() });
}

function describeSession() {
  if (session.principal === 'operator') return 'Operator';
  const tenant = session.tenant_id ? `tenant ${session.tenant_id}` : 'tenant key';
  const scopes = session.guessed ? 'scopes unknown' : session.scopes.join(', ') || 'no scopes';
  return `Key of ${tenant} (${scopes})`;
}

function showSignedIn() {
  byId('nav').hidden = false;
  byId('who').hidden = false;
  replace(byId('principal'), describeSession());
  document.body.classList.toggle('read-only', !canWrite());
}

function showSignIn(message) {
  session = null;
  current?.module.leave?.();
  current = null;
  byId('nav').hidden = true;
  byId('who').hidden = true;
  // Nothing the previous bearer saw stays in the page for the next one.
  for (const id of ['overview-cards', 'overview-breakers', 'endpoints-table', 'events-source', 'events-table', 'event-body']) {
    replace(byId(id));
  }
  showOnly('view-sign-in');
  document.title = 'Sign in · Kapsel dashboard';
  replace(byId('sign-in-error'), message ?? '');
  replace(byId('status'));
  byId('token').value = '';
  byId('token').focus();
}

async function signIn(token) {
  try {
    session = await whoAmI(token);
  } catch (error) {
    session = null;
    if (error instanceof ApiError && error.status === 401) {
      return 'Wrong token: Kapsel refused it (a wrong or revoked token, or a key without the read scope).';
    }
    return `Could not sign in: ${describe(error)}`;
  }
  if (session.principal === 'key' && !session.guessed && !session.scopes.includes('read')) {
    session = null;
    return 'This key has no read scope: the dashboard needs a key with read (and write for actions).';
  }
  storeToken(token);
  showSignedIn();
  await route();
  return null;
}

function start() {
  whenRefused(() => {
    forgetToken();
    showSignIn('Kapsel refused the token (revoked or replaced): sign in again.');
  });
  byId('sign-in-form').addEventListener('submit', async (submitted) => {
    submitted.preventDefault();
    const token = byId('token').value.trim();
    if (!token) {
      replace(byId('sign-in-error'), 'Enter a token or key.');
      return;
    }
    replace(byId('sign-in-error'), 'Signing in…');
    const problem = await signIn(token);
    if (problem) {
      showSignIn(problem);
    } else {
      byId('main').focus();
    }
  });
  byId('sign-out').addEventListener('click', () => {
    forgetToken();
    showSignIn('Signed out.');
  });
  window.addEventListener('hashchange', () => {
    route().catch((error) => announce(describe(error), 'error'));
  });
  for (const name of Object.keys(VIEWS)) VIEWS[name].module.setUp?.();
  const token = storedToken();
  if (token) {
    signIn(token).then((problem) => {
      if (problem) {
        forgetToken();
        showSignIn(problem);
      }
    });
  } else {
    showSignIn();
  }
}

start();
