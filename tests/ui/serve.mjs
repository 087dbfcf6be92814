// For working on the dashboard without rebuilding Kapsel: serves ../../ui/ from disk under /ui/
// with the same Content-Security-Policy Kapsel sends (engine/src/admin/assets.rs), and passes
// every other path to a running Kapsel.
//
//   KAPSEL_URL=http://127.0.0.1:8080 node tests/ui/serve.mjs   # then open http://127.0.0.1:8090/ui/
//
// Not used by the tests, which run against Kapsel's own embedded files.

import { createServer, request } from 'node:http';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const upstream = new URL(process.env.KAPSEL_URL ?? 'http://127.0.0.1:8080');
const port = Number(process.env.PORT ?? 8090);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../ui');
const policy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };

createServer(async (incoming, outgoing) => {
  const url = new URL(incoming.url, 'http://localhost');
  if (url.pathname.startsWith('/ui/')) {
    const name = url.pathname.slice('/ui/'.length) || 'index.html';
    const file = path.join(root, name);
    if (!file.startsWith(root + path.sep) || !types[path.extname(file)]) {
      outgoing.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(file);
      outgoing.writeHead(200, { 'Content-Type': types[path.extname(file)], 'Content-Security-Policy': policy, 'Cache-Control': 'no-cache' });
      outgoing.end(body);
    } catch {
      outgoing.writeHead(404).end();
    }
    return;
  }
  const forward = request(
    { host: upstream.hostname, port: upstream.port, method: incoming.method, path: incoming.url, headers: { ...incoming.headers, host: upstream.host } },
    (answer) => {
      outgoing.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(outgoing);
    },
  );
  forward.on('error', (error) => outgoing.writeHead(502).end(String(error)));
  incoming.pipe(forward);
}).listen(port, '127.0.0.1', () => console.log(`dashboard from ${root} on http://127.0.0.1:${port}/ui/, API at ${upstream}`));
