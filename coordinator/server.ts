/**
 * The coordinator's network edge: one HTTP server that serves the run's base-model files by
 * sha256 (content-addressed, so a worker can cache and verify them) and upgrades /ws to the
 * worker WebSocket. Only the manifest's files are served; nothing else on disk is reachable.
 */
import { createReadStream } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import type { MeshExecutor } from './mesh.ts';
import type { ModelFile } from './model-dir.ts';

export interface ServerOptions {
  host: string;
  port: number;
  files: ModelFile[];
  mesh: MeshExecutor;
  /** largest frame a worker may send, in bytes */
  maxPayload: number;
  heartbeatMs: number;
  status: () => unknown;
}

export interface RunningServer {
  url: string;
  wsUrl: string;
  close(): Promise<void>;
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const bySha = new Map(opts.files.map((f) => [f.sha256, f]));
  const http: Server = createServer((req, res) => handleHttp(req, res, bySha, opts.status));
  const wss = new WebSocketServer({ server: http, path: '/ws', maxPayload: opts.maxPayload });
  wss.on('connection', (ws) => opts.mesh.attach(ws));
  const heartbeat = setInterval(() => opts.mesh.heartbeat(), opts.heartbeatMs);
  heartbeat.unref();
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(opts.port, opts.host, () => resolve());
  });
  const { port } = http.address() as AddressInfo;
  const host = opts.host === '0.0.0.0' || opts.host === '::' ? '127.0.0.1' : opts.host;
  return {
    url: `http://${host}:${port}`,
    wsUrl: `ws://${host}:${port}/ws`,
    close: () => new Promise((resolve) => {
      clearInterval(heartbeat);
      for (const client of wss.clients) client.terminate();
      wss.close();
      http.close(() => resolve());
      http.closeAllConnections();
    }),
  };
}

function handleHttp(req: IncomingMessage, res: ServerResponse, bySha: Map<string, ModelFile>, status: () => unknown): void {
  const url = new URL(req.url ?? '/', 'http://localhost');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' }).end();
    return;
  }
  const file = /^\/files\/([0-9a-f]{64})$/.exec(url.pathname);
  if (file) {
    const f = bySha.get(file[1]);
    if (!f) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('no such file in this run\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': f.bytes, 'cache-control': 'public, max-age=31536000, immutable', etag: `"${f.sha256}"` });
    if (req.method === 'HEAD') res.end();
    else createReadStream(f.path).pipe(res);
    return;
  }
  if (url.pathname === '/status') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(status()));
    return;
  }
  res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
}
