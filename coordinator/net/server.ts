/**
 * The coordinator's network edge, one port: the worker WebSocket (/ws), the run's base-model files
 * by sha256 (/files/<sha256>: content-addressed, so workers cache and verify them), the dashboard
 * (/) and join page (/join) with their bundles (/assets/) and tfjs's wasm binaries (/wasm/), and
 * the run's state as JSON (/api/status) and a live stream (/api/events, Server-Sent Events).
 * Only these paths exist: no request maps onto the file system beyond fixed names. Connections are
 * capped in total and per client address (net-limits.ts) before any of them costs more than a socket.
 */
import { spawnSync } from 'node:child_process';
import { createHash, timingSafeEqual } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import { closeCodeFor, ErrorCodes } from '../../shared/errors.ts';
import { cleanPeerText } from '../../shared/protocol/peer-text.ts';
import { listenError } from './listen.ts';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { packagePath } from '../../node/package-root.ts';
import { WebSocketServer } from 'ws';
import { EventStreams } from './event-streams.ts';
import { DEFAULT_SECURITY } from '../engine/mesh.ts';
import type { Peer, PeerEvents } from '../engine/peer.ts';
import { attachWebSocket } from './ws-peer.ts';
import type { ModelFile } from '../io/model-dir.ts';
import type { RunMonitor } from './monitor.ts';
import {
  AddressCounter,
  canonicalAddress,
  clientAddress,
  clientKey,
  resolveNetLimits,
  type NetLimits,
} from './net-limits.ts';

const webDir = packagePath('build', 'web');
// from the package's folder (its package.json), not its main file: the offline bundle ships the folder
// without the package's JavaScript (scripts/bundle.mjs)
const wasmDir = join(
  dirname(fileURLToPath(import.meta.resolve('@tensorflow/tfjs-backend-wasm/package.json'))),
  'wasm-out',
);

/** Who takes the worker connections: a run's mesh, or the standing pool's (coordinator/pool/pool-mesh.ts). */
export interface WorkerEdge {
  attach(peer: Peer): PeerEvents;
  heartbeat(intervalMs: number): void;
}

/** What the dashboard reads: a run's monitor, or the pool's. */
export interface EdgeMonitor extends Pick<RunMonitor, 'log' | 'subscribe'> {
  snapshot(): object;
}

export interface ServerOptions {
  host: string;
  port: number;
  files: ModelFile[];
  mesh: WorkerEdge;
  monitor: EdgeMonitor;
  /** more routes, asked first (the pool's API): true when it answered the request */
  routes?: (req: IncomingMessage, res: ServerResponse) => boolean;
  /** what / shows: a run's dashboard (default) or the standing pool's */
  home?: 'run' | 'pool';
  /** largest frame a worker may send, in bytes */
  maxPayload: number;
  heartbeatMs: number;
  /** join token checked in the HTTP upgrade, before a WebSocket exists (undefined: open run) */
  token?: string;
  /**
   * relays (coordinator/relay/) announce themselves in the upgrade (`X-Loramesh-Role: relay`) and must present this
   * token; undefined: relays are refused
   */
  relayToken?: string;
  /** largest frame a relay may send (its block sums and the results it sends up whole); default maxPayload */
  relayMaxPayload?: number;
  /** Origin values allowed to open the WebSocket (browser pages); undefined: any */
  allowedOrigins?: string[];
  /** concurrent WebSocket connections; the same as limits.maxConnections (defaults: DEFAULT_NET_LIMITS) */
  maxConnections?: number;
  /** connection caps, total and per client address, and trusted reverse proxies (defaults: DEFAULT_NET_LIMITS) */
  limits?: Partial<NetLimits>;
  /** the HTTP request (incl. the upgrade) must arrive within this many ms (slow-loris) */
  headersTimeoutMs?: number;
  /** https + wss with these PEM files */
  tls?: { cert: string; key: string };
  /**
   * control actions (POST /api/admin/{pause,resume,stop,kick}) need `Authorization: Bearer <adminToken>`;
   * none: disabled
   */
  adminToken?: string;
  admin?: AdminActions;
  /** 'admin': /api/status and /api/events need the admin token too (the pages themselves hold no data) */
  dashboardAccess?: 'public' | 'admin';
}

export interface AdminActions {
  pause(): void;
  resume(): void;
  stop(): void;
  /** true when the worker existed */
  kick(workerId: string): boolean;
}

/** Constant-time token comparison (hash first, so lengths do not leak either). */
export function tokenMatches(given: string | undefined, expected: string): boolean {
  if (given === undefined) return false;
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/**
 * The join token from `Authorization: Bearer …` (Node workers) or a `loramesh.token.<base64url>` subprotocol
 * (browsers cannot set headers).
 */
export function tokenFromUpgrade(req: IncomingMessage): string | undefined {
  const auth = req.headers.authorization;
  if (auth?.startsWith('Bearer ')) return auth.slice(7);
  for (const p of (req.headers['sec-websocket-protocol'] ?? '').split(',').map((x) => x.trim())) {
    if (p.startsWith('loramesh.token.'))
      return Buffer.from(p.slice('loramesh.token.'.length), 'base64url').toString('utf8');
  }
  return undefined;
}

/** The host name of a Host header (no port; IPv6 without brackets), or undefined when absent or odd. */
function hostOf(header: string | undefined): string | undefined {
  if (!header || header.length > 256) return undefined;
  try {
    return new URL(`http://${header}`).hostname.replace(/^\[|\]$/g, '');
  } catch {
    return undefined;
  }
}

function refuseUpgrade(socket: Duplex, status: number, reason: string, code: string): void {
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: text/plain\r\n` +
      `X-Loramesh-Error: ${code}\r\n\r\n${code}: ${reason}\n`,
  );
  socket.destroy();
}

export interface RunningServer {
  url: string;
  wsUrl: string;
  /** open now: TCP connections counted per address (a trusted proxy's are not), worker WebSockets, event streams */
  openConnections(): { tcp: number; workers: number; eventStreams: number };
  close(): Promise<void>;
}

/** Builds the browser bundles if they are missing (e.g. a checkout without `npm install`). */
export function ensureWebBuild(): void {
  if (['index.html', 'join.js', 'pool.html', 'pool-dashboard.js'].every((f) => existsSync(join(webDir, f)))) return;
  const r = spawnSync(process.execPath, [packagePath('scripts', 'build-web.mjs')], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error('building the browser bundles failed (node scripts/build-web.mjs)');
}

const STATIC: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/join': { file: 'join.html', type: 'text/html; charset=utf-8' },
  '/assets/join.js': { file: 'join.js', type: 'text/javascript' },
  '/assets/dashboard.js': { file: 'dashboard.js', type: 'text/javascript' },
  '/assets/join.js.map': { file: 'join.js.map', type: 'application/json' },
  '/assets/dashboard.js.map': { file: 'dashboard.js.map', type: 'application/json' },
  '/assets/pool-dashboard.js': { file: 'pool-dashboard.js', type: 'text/javascript' },
  '/assets/pool-dashboard.js.map': { file: 'pool-dashboard.js.map', type: 'application/json' },
};
/** The standing pool's home page (coordinator/pool/dashboard/) instead of a run's dashboard. */
const POOL_HOME = { file: 'pool.html', type: 'text/html; charset=utf-8' };
const WASM = ['tfjs-backend-wasm.wasm', 'tfjs-backend-wasm-simd.wasm', 'tfjs-backend-wasm-threaded-simd.wasm'];

// Cross-origin isolation lets browsers run the wasm backend multi-threaded (SharedArrayBuffer).
const ISOLATION = {
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-embedder-policy': 'require-corp',
  'cross-origin-resource-policy': 'same-origin',
};

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  ensureWebBuild();
  const bySha = new Map(opts.files.map((f) => [f.sha256, f]));
  const limits = resolveNetLimits({ maxConnections: opts.maxConnections, ...opts.limits });
  const trusted = new Set(limits.trustedProxies);
  const clientOf = (req: IncomingMessage) =>
    clientKey(clientAddress(req.socket.remoteAddress, req.headers['x-forwarded-for'], trusted));
  const tcp = new AddressCounter(limits.maxConnectionsPerAddress);
  const workers = new AddressCounter(limits.maxWorkersPerAddress);
  const streams = new EventStreams(limits, (line) => opts.monitor.log(line));
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    if (opts.routes?.(req, res)) return;
    if (req.url?.startsWith('/api/admin/')) return handleAdmin(req, res, opts);
    if (
      opts.dashboardAccess === 'admin' &&
      req.url?.startsWith('/api/') &&
      !tokenMatches(bearer(req), opts.adminToken ?? '')
    ) {
      res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ error: ErrorCodes.AUTH }));
      return;
    }
    handleHttp(req, res, bySha, opts.monitor, opts.home ?? 'run', (headers) =>
      streams.open(req, res, clientOf(req), headers),
    );
  };
  // Slow-loris: the request head (the upgrade included) must arrive within headersTimeout; Node
  // checks that every connectionsCheckingInterval, so keep the interval below the timeout.
  const headersTimeout = opts.headersTimeoutMs ?? DEFAULT_SECURITY.handshakeTimeoutMs;
  const timeouts = {
    headersTimeout,
    requestTimeout: Math.max(60_000, headersTimeout),
    connectionsCheckingInterval: Math.max(100, Math.min(5000, headersTimeout / 2)),
  };
  const http: Server = opts.tls
    ? createHttpsServer({ cert: readFileSync(opts.tls.cert), key: readFileSync(opts.tls.key), ...timeouts }, handler)
    : createServer(timeouts, handler);
  // Per-address TCP cap, before a single byte is parsed. A trusted proxy carries many clients.
  http.on('connection', (socket: Socket) => {
    if (trusted.has(canonicalAddress(socket.remoteAddress ?? '') ?? '')) return;
    const client = clientKey(socket.remoteAddress ?? '');
    if (tcp.atLimit(client)) return void socket.destroy();
    tcp.add(client);
    socket.once('close', () => tcp.remove(client));
  });
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: opts.maxPayload,
    handleProtocols: (protocols) => (protocols.has('loramesh') ? 'loramesh' : false),
  });
  // a relay's block-result names a step's micro-batches: its own limit (one result plus the items), so workers keep
  // theirs
  const relayWss =
    opts.relayToken === undefined
      ? wss
      : new WebSocketServer({ noServer: true, maxPayload: opts.relayMaxPayload ?? opts.maxPayload });
  // Every check happens here, before a WebSocket exists: a refused peer costs one HTTP response.
  http.on('upgrade', (req, socket, head) => {
    socket.on('error', () => socket.destroy());
    if (new URL(req.url ?? '/', 'http://x').pathname !== '/ws')
      return refuseUpgrade(socket, 404, 'Not Found', 'LM_ERR_STATE');
    const origin = req.headers.origin;
    if (origin && opts.allowedOrigins && !opts.allowedOrigins.includes(origin))
      return refuseUpgrade(socket, 403, 'Forbidden origin', ErrorCodes.ORIGIN);
    if (wss.clients.size + (relayWss === wss ? 0 : relayWss.clients.size) >= limits.maxConnections) {
      return refuseUpgrade(socket, 503, 'Too many connections', ErrorCodes.LIMIT);
    }
    const client = clientOf(req);
    if (workers.atLimit(client)) {
      return refuseUpgrade(socket, 503, 'Too many connections from this address', ErrorCodes.LIMIT);
    }
    const relay = req.headers['x-loramesh-role'] === 'relay';
    if (relay) {
      // a relay is trusted with the run's secrets (its spot checks): only with the relay token, never the workers'
      if (opts.relayToken === undefined)
        return refuseUpgrade(
          socket,
          403,
          'This coordinator takes no relays (start it with --relay-token)',
          ErrorCodes.AUTH,
        );
      if (!tokenMatches(tokenFromUpgrade(req), opts.relayToken))
        return refuseUpgrade(socket, 401, 'Unauthorized relay', ErrorCodes.AUTH);
    } else if (opts.token !== undefined && !tokenMatches(tokenFromUpgrade(req), opts.token)) {
      // Browsers cannot read the status of a refused upgrade, only a close code: a page that
      // offered a token subprotocol gets the socket closed at once (1008, closeCodeFor) and the reason,
      // so it stops instead of retrying. It never reaches the mesh. Anyone else gets 401.
      if (!(req.headers['sec-websocket-protocol'] ?? '').includes('loramesh.token.'))
        return refuseUpgrade(socket, 401, 'Unauthorized', ErrorCodes.AUTH);
      wss.handleUpgrade(req, socket, head, (ws) => ws.close(closeCodeFor(ErrorCodes.AUTH), ErrorCodes.AUTH));
      return;
    }
    // ws completes the upgrade synchronously here, so the check above still holds when counting.
    (relay ? relayWss : wss).handleUpgrade(req, socket, head, (ws) => {
      workers.add(client);
      ws.once('close', () => workers.remove(client));
      attachWebSocket(opts.mesh, ws, relay, hostOf(req.headers.host));
    });
  });
  const heartbeat = setInterval(() => opts.mesh.heartbeat(opts.heartbeatMs), opts.heartbeatMs);
  heartbeat.unref();
  const unsubscribe = opts.monitor.subscribe((event) => streams.publish(event));
  await new Promise<void>((resolve, reject) => {
    http.once('error', (err: NodeJS.ErrnoException) => reject(listenError(opts.host, opts.port, err)));
    http.listen(opts.port, opts.host, () => resolve());
  });
  const { port } = http.address() as AddressInfo;
  const host = opts.host === '0.0.0.0' || opts.host === '::' ? '127.0.0.1' : opts.host;
  const secure = opts.tls ? 's' : '';
  return {
    url: `http${secure}://${host}:${port}`,
    wsUrl: `ws${secure}://${host}:${port}/ws`,
    openConnections: () => ({ tcp: tcp.total, workers: workers.total, eventStreams: streams.size }),
    close: () =>
      new Promise((resolve) => {
        clearInterval(heartbeat);
        unsubscribe();
        streams.closeAll();
        for (const client of [...wss.clients, ...(relayWss === wss ? [] : relayWss.clients)]) client.terminate();
        if (relayWss !== wss) relayWss.close();
        // wss.close calls back once every worker socket has closed: the mesh logs "worker … left" before this resolves.
        Promise.all([new Promise((r) => wss.close(r)), new Promise((r) => http.close(r))]).then(() => resolve());
        http.closeAllConnections();
      }),
  };
}

function sendFile(
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  type: string,
  extra: Record<string, string | number> = {},
): void {
  if (!existsSync(path)) {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not built: run npm install\n');
    return;
  }
  res.writeHead(200, { 'content-type': type, 'content-length': statSync(path).size, ...ISOLATION, ...extra });
  if (req.method === 'HEAD') res.end();
  else createReadStream(path).pipe(res);
}

const bearer = (req: IncomingMessage) =>
  req.headers.authorization?.startsWith('Bearer ') ? req.headers.authorization.slice(7) : undefined;

function handleAdmin(req: IncomingMessage, res: ServerResponse, opts: ServerOptions): void {
  const reply = (status: number, body: object): void =>
    void res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  if (req.method !== 'POST') return void res.writeHead(405, { allow: 'POST' }).end();
  if (!opts.adminToken || !opts.admin)
    return reply(404, { error: 'admin actions are disabled (start with --admin-token)' });
  if (!tokenMatches(bearer(req), opts.adminToken)) return reply(401, { error: ErrorCodes.AUTH });
  const url = new URL(req.url ?? '/', 'http://localhost');
  const action = url.pathname.slice('/api/admin/'.length);
  const worker = url.searchParams.get('worker');
  opts.monitor.log(`admin: ${cleanPeerText(action, 40)}${worker ? ` ${cleanPeerText(worker, 40)}` : ''}`);
  switch (action) {
    case 'pause':
      opts.admin.pause();
      return reply(200, { ok: true });
    case 'resume':
      opts.admin.resume();
      return reply(200, { ok: true });
    case 'stop':
      opts.admin.stop();
      return reply(200, { ok: true });
    case 'kick': {
      const id = url.searchParams.get('worker') ?? '';
      return opts.admin.kick(id)
        ? reply(200, { ok: true })
        : reply(404, { error: `no worker ${JSON.stringify(id.slice(0, 40))}` });
    }
    default:
      return reply(404, { error: 'unknown admin action' });
  }
}

function handleHttp(
  req: IncomingMessage,
  res: ServerResponse,
  bySha: Map<string, ModelFile>,
  monitor: EdgeMonitor,
  home: 'run' | 'pool',
  openEventStream: (headers: Record<string, string>) => void,
): void {
  const url = new URL(req.url ?? '/', 'http://localhost');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' }).end();
    return;
  }
  const file = /^\/files\/([0-9a-f]{64})$/.exec(url.pathname);
  if (file) {
    const f = bySha.get(file[1]);
    if (!f) res.writeHead(404, { 'content-type': 'text/plain' }).end('no such file in this run\n');
    else
      sendFile(req, res, f.path, 'application/octet-stream', {
        'cache-control': 'public, max-age=31536000, immutable',
        etag: `"${f.sha256}"`,
      });
    return;
  }
  const page = home === 'pool' && url.pathname === '/' ? POOL_HOME : STATIC[url.pathname];
  if (page) return sendFile(req, res, join(webDir, page.file), page.type, { 'cache-control': 'no-cache' });
  const wasm = /^\/wasm\/([a-z-]+\.wasm)$/.exec(url.pathname);
  if (wasm && WASM.includes(wasm[1]))
    return sendFile(req, res, join(wasmDir, wasm[1]), 'application/wasm', { 'cache-control': 'public, max-age=86400' });
  if (url.pathname === '/api/status') {
    res
      .writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store', ...ISOLATION })
      .end(JSON.stringify(monitor.snapshot()));
    return;
  }
  if (url.pathname === '/api/events') return openEventStream(ISOLATION);
  res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
}
