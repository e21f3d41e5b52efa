// Connection limits at the coordinator's edge, on real loopback sockets (Linux routes all of 127/8 to
// lo, so 127.0.0.x are different client addresses): an event stream that does not read is dropped at
// its buffer bound while a reading one keeps receiving; event streams, worker sockets and TCP
// connections are capped per address; X-Forwarded-For counts only behind a trusted proxy. Then the
// pure parts: clientKey (IPv4-mapped → IPv4, IPv6 per /64), clientAddress and the merged defaults.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { request, type IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import { setImmediate as tick, setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { checkLoraConfig, checkTrainConfig } from '../../../shared/config.ts';
import { F32 } from '../../../shared/protocol/wire-codec.ts';
import { MeshExecutor } from '../../../coordinator/engine/mesh.ts';
import { RunMonitor, type MonitorEvent } from '../../../coordinator/net/monitor.ts';
import {
  AddressCounter,
  canonicalAddress,
  clientAddress,
  clientKey,
  DEFAULT_NET_LIMITS,
  resolveNetLimits,
  type NetLimits,
} from '../../../coordinator/net/net-limits.ts';
import { startServer, type RunningServer } from '../../../coordinator/net/server.ts';
import { throwsCode } from '../../helpers/assert.ts';
import { tinyConfig } from '../../helpers/tiny-model.ts';

const servers: RunningServer[] = [];
const sockets: { destroy(): void }[] = [];
after(async () => {
  for (const s of sockets) s.destroy();
  await Promise.all(servers.map((s) => s.close()));
});

/** The edge alone: a mesh without work (sockets that never say hello stay open) and a monitor. */
async function startEdge(limits: Partial<NetLimits>) {
  const lora = checkLoraConfig({ r: 2, alpha: 4 });
  const manifest = {
    runId: 'net-limits',
    model: { config: tinyConfig(), files: [] },
    lora,
    adapter: [],
    wire: { up: F32, down: F32 },
  };
  const mesh = new MeshExecutor({ manifest, security: { handshakeTimeoutMs: 60_000 } });
  const monitor = new RunMonitor(
    {
      runId: 'net-limits',
      model: 'none',
      modelType: 'llama',
      modelParameters: 0,
      adapterParameters: 0,
      steps: 1,
      lora,
      train: checkTrainConfig({ steps: 1 }),
      wire: null,
      local: null,
      arithmetic: 'simd128',
    },
    () => [],
  );
  const server = await startServer({
    host: '127.0.0.1',
    port: 0,
    files: [],
    mesh,
    monitor,
    maxPayload: 1 << 20,
    heartbeatMs: 60_000,
    limits,
  });
  servers.push(server);
  return { server, monitor, port: Number(new URL(server.url).port) };
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

interface Answer {
  status: number;
  code: string | undefined;
  body: string;
  res: IncomingMessage;
  ended: Promise<void>;
}

/** GET `path` from `localAddress` on a fresh connection; resolves at the response head (the body accrues in `body`). */
function get(port: number, path: string, localAddress: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, localAddress, headers, agent: false }, (res) => {
      const ended = new Promise<void>((r) => res.on('end', r));
      const code = res.headers['x-loramesh-error'] as string | undefined;
      const answer: Answer = { status: res.statusCode ?? 0, code, body: '', res, ended };
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (answer.body += chunk));
      res.on('error', () => {});
      sockets.push(res);
      resolve(answer);
    });
    req.on('error', reject);
    req.end();
  });
}

/** A worker socket from `localAddress` that never says hello: 'open', or the refused upgrade's status and code. */
function openWorker(port: number, localAddress: string, headers: Record<string, string> = {}) {
  return new Promise<{ ws: WebSocket } | { status: number; code: string | undefined }>((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, 'loramesh', { localAddress, headers });
    ws.on('error', () => {});
    ws.on('open', () => {
      sockets.push({ destroy: () => ws.terminate() });
      resolve({ ws });
    });
    ws.on('unexpected-response', (_req, res) => {
      resolve({ status: res.statusCode ?? 0, code: res.headers['x-loramesh-error'] as string | undefined });
    });
  });
}
const opened = (r: Awaited<ReturnType<typeof openWorker>>) => ('ws' in r ? 'open' : r);
const REFUSED = { status: 503, code: 'LM_ERR_LIMIT' };

test('an event stream that does not read is dropped at its buffer bound; a reading one keeps receiving', async () => {
  const bound = 64 * 1024;
  const { server, monitor, port } = await startEdge({ maxEventStreamBufferBytes: bound });
  const drops: string[] = [];
  monitor.subscribe((e: MonitorEvent) => {
    if (e.kind === 'log' && /^event stream .* dropped/.test(e.line)) drops.push(e.line);
  });
  // The stalled client: a raw request, and not one byte read after it.
  const stalled: Socket = connect({ host: '127.0.0.1', port, localAddress: '127.0.0.1' });
  sockets.push(stalled);
  stalled.on('error', () => {});
  stalled.pause();
  stalled.write('GET /api/events HTTP/1.1\r\nHost: loramesh\r\n\r\n');
  const reader = await get(port, '/api/events', '127.0.0.2');
  assert.equal(reader.status, 200);
  await until(() => server.openConnections().eventStreams === 2, 'both streams to open');

  const line = 'x'.repeat(1000);
  let pushed = 0;
  // Small batches with a turn of the event loop between them, so the reader (in this process) drains.
  while (drops.length === 0 && pushed < 256 * 1024 * 1024) {
    for (let i = 0; i < 8; i++) monitor.log(line);
    pushed += 8 * line.length;
    await tick();
  }
  assert.deepEqual(
    drops.map((l) => l.replace(/\(\d+ bytes/, '(N bytes')),
    [`event stream of 127.0.0.1 dropped: it does not read (N bytes unsent, limit ${bound})`],
  );
  assert.ok(pushed > bound, `dropped after ${pushed} bytes, more than the ${bound}-byte bound`);
  assert.equal(server.openConnections().eventStreams, 1, 'the dropped stream is no longer counted');

  monitor.log('after the drop');
  await until(() => reader.body.includes('after the drop'), 'the reader to get the next event');
  assert.ok(reader.body.includes('event stream of 127.0.0.1 dropped'), 'the reader saw the drop in the log');
  assert.equal(server.openConnections().eventStreams, 1);
});

test('event streams: 429 LM_ERR_LIMIT past the per-address cap, 503 past the global cap; close frees one', async () => {
  const { server, port } = await startEdge({ maxEventStreams: 3, maxEventStreamsPerAddress: 2 });
  const first = await get(port, '/api/events', '127.0.0.1');
  assert.equal((await get(port, '/api/events', '127.0.0.1')).status, 200);
  const third = await get(port, '/api/events', '127.0.0.1');
  assert.equal(third.status, 429);
  assert.equal(third.code, 'LM_ERR_LIMIT');
  await third.ended;
  assert.equal(JSON.parse(third.body).error, 'LM_ERR_LIMIT');
  assert.equal((await get(port, '/api/events', '127.0.0.2')).status, 200);
  const global = await get(port, '/api/events', '127.0.0.3');
  assert.deepEqual([global.status, global.code], [503, 'LM_ERR_LIMIT']);
  assert.equal(server.openConnections().eventStreams, 3);

  first.res.destroy();
  await until(() => server.openConnections().eventStreams === 2, 'the closed stream to be forgotten');
  assert.equal((await get(port, '/api/events', '127.0.0.1')).status, 200);
});

test('worker sockets: 503 LM_ERR_LIMIT past the per-address cap while another address still joins', async () => {
  const { server, port } = await startEdge({ maxWorkersPerAddress: 3 });
  const held = [];
  for (let i = 0; i < 3; i++) held.push(await openWorker(port, '127.0.0.1'));
  assert.deepEqual(held.map(opened), ['open', 'open', 'open']);
  assert.deepEqual(await openWorker(port, '127.0.0.1'), REFUSED);
  assert.equal(opened(await openWorker(port, '127.0.0.2')), 'open');
  assert.equal(server.openConnections().workers, 4);

  const one = held[0];
  assert.ok('ws' in one);
  one.ws.close();
  await until(() => server.openConnections().workers === 3, 'the closed worker socket to be forgotten');
  assert.equal(opened(await openWorker(port, '127.0.0.1')), 'open');
});

test('TCP: a connection past the per-address cap is closed before a byte is read; others are served', async () => {
  const { server, port } = await startEdge({ maxConnectionsPerAddress: 4 });
  const raw = (localAddress: string) => {
    const s = connect({ host: '127.0.0.1', port, localAddress });
    s.on('error', () => {});
    sockets.push(s);
    return s;
  };
  const held = Array.from({ length: 4 }, () => raw('127.0.0.3'));
  await until(() => server.openConnections().tcp === 4, 'four connections to be counted');
  const extra = raw('127.0.0.3');
  let answered = '';
  extra.on('data', (chunk) => (answered += chunk));
  extra.write('GET /api/status HTTP/1.1\r\nHost: loramesh\r\n\r\n');
  await new Promise((r) => extra.on('close', r));
  assert.equal(answered, '', 'no response on the refused connection');
  assert.equal(server.openConnections().tcp, 4);
  assert.equal((await get(port, '/api/status', '127.0.0.4')).status, 200);

  held[0].destroy();
  await until(() => server.openConnections().tcp === 3, 'the closed connection to be forgotten');
  assert.equal((await get(port, '/api/status', '127.0.0.3')).status, 200);
});

test('X-Forwarded-For: ignored without trusted proxies (a spoofed header escapes nothing)', async () => {
  const { port } = await startEdge({ maxWorkersPerAddress: 2, maxEventStreamsPerAddress: 1 });
  assert.equal(opened(await openWorker(port, '127.0.0.5', { 'x-forwarded-for': '10.0.0.1' })), 'open');
  assert.equal(opened(await openWorker(port, '127.0.0.5', { 'x-forwarded-for': '10.0.0.2' })), 'open');
  assert.deepEqual(await openWorker(port, '127.0.0.5', { 'x-forwarded-for': '10.0.0.3' }), REFUSED);
  assert.equal((await get(port, '/api/events', '127.0.0.5', { 'x-forwarded-for': '10.0.0.1' })).status, 200);
  assert.equal((await get(port, '/api/events', '127.0.0.5', { 'x-forwarded-for': '10.0.0.2' })).status, 429);
});

test('X-Forwarded-For via a trusted proxy: clients counted apart (IPv6 per /64); no TCP cap on the proxy', async () => {
  const { server, port } = await startEdge({
    trustedProxies: ['127.0.0.1'],
    maxWorkersPerAddress: 1,
    maxConnectionsPerAddress: 2,
    maxEventStreamsPerAddress: 1,
  });
  const via = (xff: string) => openWorker(port, '127.0.0.1', { 'x-forwarded-for': xff });
  assert.equal(opened(await via('10.0.0.1')), 'open');
  assert.equal(opened(await via('10.0.0.2')), 'open');
  assert.deepEqual(await via('10.0.0.1'), REFUSED, 'the same forwarded client twice');
  // The right-most hop that is not a trusted proxy is the client; what it claims before that is not believed.
  assert.equal(opened(await via('10.0.0.1, 10.0.0.3')), 'open');
  assert.deepEqual(await via('10.0.0.9, 10.0.0.3, 127.0.0.1'), REFUSED);
  assert.equal(opened(await via('2001:db8::1')), 'open');
  assert.deepEqual(await via('2001:db8:0:0:ffff::2'), REFUSED, 'the same /64');
  assert.equal(opened(await via('2001:db8:0:1::1')), 'open');
  assert.equal(server.openConnections().workers, 5);
  assert.equal(server.openConnections().tcp, 0, "the proxy's own connections are not counted");
  assert.equal((await get(port, '/api/events', '127.0.0.1', { 'x-forwarded-for': '10.0.0.1' })).status, 200);
  assert.equal((await get(port, '/api/events', '127.0.0.1', { 'x-forwarded-for': '10.0.0.1' })).status, 429);
  assert.equal((await get(port, '/api/events', '127.0.0.1', { 'x-forwarded-for': '10.0.0.2' })).status, 200);
  // A peer that is not the trusted proxy is counted as itself, whatever it forwards.
  assert.equal(opened(await openWorker(port, '127.0.0.6', { 'x-forwarded-for': '10.0.0.7' })), 'open');
  assert.deepEqual(await openWorker(port, '127.0.0.6', { 'x-forwarded-for': '10.0.0.8' }), REFUSED);
});

test('clientKey: IPv4 as is, IPv4-mapped IPv6 as IPv4, other IPv6 per /64 whatever the spelling', () => {
  assert.equal(clientKey('203.0.113.7'), '203.0.113.7');
  assert.equal(clientKey('::ffff:203.0.113.7'), '203.0.113.7');
  assert.equal(clientKey('::FFFF:203.0.113.7'), '203.0.113.7');
  assert.equal(clientKey('::ffff:cb00:7107'), '203.0.113.7');
  assert.equal(clientKey('2001:db8::1'), '2001:db8:0:0::/64');
  assert.equal(clientKey('2001:db8:0:0:ffff::2'), '2001:db8:0:0::/64');
  assert.equal(clientKey('2001:0DB8:0000:0000:1234:5678:9abc:def0'), '2001:db8:0:0::/64');
  assert.notEqual(clientKey('2001:db8:0:1::1'), clientKey('2001:db8::1'));
  assert.equal(clientKey('fe80::1%eth0'), 'fe80:0:0:0::/64');
  assert.equal(clientKey('::1'), '0:0:0:0::/64');
  assert.equal(clientKey('64:ff9b::192.0.2.1'), '64:ff9b:0:0::/64');
  for (const bad of ['', 'localhost', '1.2.3', '1.2.3.4.5', '2001:db8:::1', '10.0.0.1:80']) {
    assert.equal(clientKey(bad), 'unknown', bad);
  }
  assert.equal(canonicalAddress('2001:DB8::1'), '2001:db8:0:0:0:0:0:1');
  assert.equal(canonicalAddress('::'), '0:0:0:0:0:0:0:0');
});

test('clientAddress: the peer unless it is a trusted proxy; then the right-most untrusted forwarded hop', () => {
  const none = new Set<string>();
  const proxies = new Set(['10.0.0.1', '10.0.0.2']);
  assert.equal(clientAddress('::ffff:198.51.100.1', '203.0.113.5', none), '198.51.100.1');
  assert.equal(clientAddress('10.0.0.1', undefined, proxies), '10.0.0.1');
  assert.equal(clientAddress('10.0.0.1', '203.0.113.5', proxies), '203.0.113.5');
  assert.equal(clientAddress('10.0.0.1', '198.51.100.9, 203.0.113.5, 10.0.0.2', proxies), '203.0.113.5');
  assert.equal(clientAddress('10.0.0.1', ['198.51.100.9', '203.0.113.5:4711'], proxies), '203.0.113.5');
  assert.equal(clientAddress('10.0.0.1', '[2001:db8::7]:443', proxies), '2001:db8:0:0:0:0:0:7');
  assert.equal(clientAddress('10.0.0.1', '10.0.0.2', proxies), '10.0.0.2', 'only proxies: the last of them');
  assert.equal(clientAddress('10.0.0.1', 'unknown, 10.0.0.2', proxies), '10.0.0.2', 'a non-address ends the walk');
  assert.equal(clientAddress(undefined, '203.0.113.5', proxies), 'unknown');
});

test('limits: defaults merged once, undefined keeps the default, bad values named', () => {
  assert.deepEqual(resolveNetLimits(), { ...DEFAULT_NET_LIMITS, trustedProxies: [] });
  const merged = resolveNetLimits({
    maxWorkersPerAddress: 8,
    maxEventStreams: undefined,
    trustedProxies: ['::ffff:10.0.0.1', '2001:DB8::1'],
  });
  assert.equal(merged.maxWorkersPerAddress, 8);
  assert.equal(merged.maxEventStreams, DEFAULT_NET_LIMITS.maxEventStreams);
  assert.deepEqual(merged.trustedProxies, ['10.0.0.1', '2001:db8:0:0:0:0:0:1']);
  throwsCode(() => resolveNetLimits({ maxConnectionsPerAddress: 0 }), 'LM_ERR_CONFIG', /PerAddress should .* got 0/);
  throwsCode(() => resolveNetLimits({ maxEventStreams: 1.5 }), 'LM_ERR_CONFIG', /maxEventStreams/);
  throwsCode(() => resolveNetLimits({ trustedProxies: ['proxy.example'] }), 'LM_ERR_CONFIG', /"proxy\.example" is not/);
  const counter = new AddressCounter(2);
  counter.add('a');
  counter.add('a');
  counter.add('b');
  assert.deepEqual([counter.atLimit('a'), counter.atLimit('b'), counter.total], [true, false, 3]);
  counter.remove('a');
  counter.remove('c');
  assert.deepEqual([counter.atLimit('a'), counter.count('a'), counter.total], [false, 1, 2]);
});
