// The admin API as the dashboard uses it: the bearer token lives in this tab's sessionStorage
// only (never a URL, a cookie or localStorage), and every call sends it.

const TOKEN_KEY = 'kapsel.token';

/** An answer other than 2xx, with the API's E-code when it gave one. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Called when a signed-in call is refused (401): the token was revoked or replaced. */
let onRefused = () => {};
export function whenRefused(callback) {
  onRefused = callback;
}

/** Builds a path with a query string from an object, leaving out empty values. */
export function withQuery(path, query = {}) {
  const parameters = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') parameters.set(name, String(value));
  }
  const text = parameters.toString();
  return text ? `${path}?${text}` : path;
}

/** One call with `token` (the stored one by default); the JSON body, or null for an empty one. */
export async function call(method, path, { token = storedToken(), body } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
    });
  } catch (error) {
    throw new ApiError(0, '', `Kapsel did not answer (${error.message})`);
  }
  const text = await response.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
  }
  if (!response.ok) {
    const code = json?.error?.code ?? '';
    const message = json?.error?.message ?? `${response.status} ${response.statusText}`;
    const error = new ApiError(response.status, code, message);
    if (response.status === 401 && token && token === storedToken()) onRefused(error);
    throw error;
  }
  return json;
}

/** `GET /metrics` as text (it takes no token; with one it also names the caller's endpoints in
 *  `kapsel_circuit_open`). */
export async function metricsText() {
  const token = storedToken();
  const response = await fetch('/metrics', {
    headers: token ? { Authorization: `Bearer ${token}` } : {},
    cache: 'no-store',
    credentials: 'omit',
  });
  if (!response.ok) throw new ApiError(response.status, '', `/metrics answered ${response.status}`);
  return response.text();
}

/** Who the token is: `{principal: "operator"|"key", tenant_id, key_id, scopes}`, from
 *  `GET /admin/session`. Throws ApiError 401 for a wrong token. Where the path is missing (an
 *  older Kapsel) it checks the token with a harmless read and tells an operator token from a key
 *  by its `ksk_` prefix; a key's scopes are then unknown, so no action is offered. */
export async function whoAmI(token) {
  try {
    return await call('GET', '/admin/session', { token });
  } catch (error) {
    if (!(error instanceof ApiError) || (error.status !== 404 && error.status !== 405)) throw error;
  }
  await call('GET', withQuery('/admin/events', { limit: 1 }), { token });
  const key = token.startsWith('ksk_');
  return {
    principal: key ? 'key' : 'operator',
    tenant_id: null,
    key_id: null,
    scopes: key ? [] : ['read', 'write', 'ingest'],
    guessed: true,
  };
}

/** A sentence for an error shown to people. */
export function describe(error) {
  if (error instanceof ApiError) {
    const code = error.code ? `${error.code}: ` : '';
    return error.status ? `${code}${error.message} (HTTP ${error.status})` : error.message;
  }
  return String(error?.message ?? error);
}
