// Crafted attacks on a live coordinator, one test each: no token, wrong token, wrong origin, a
// replayed result for an old parameter version, a result for someone else's assignment, an
// oversized frame, a slow-loris handshake, a silent socket, a message flood, path traversal on
// the HTTP endpoints. Each is refused with its code, and the run ends with the clean run's adapter.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import { decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import { PROTOCOL_VERSION, type Message } from '../../shared/protocol/messages.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { Deployment, RunConfigInput } from '../../coordinator/run/run-config.ts';
import { runTraining, type RunOptions, type RunResult } from '../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';
import { observeFor, signal, until } from '../helpers/wait.ts';

const TOKEN = 'correct horse battery staple';
const root = mkdtempSync(join(tmpdir(), 'loramesh-attacks-'));
writeTinyModelDir(join(root, 'model'), 12);
const model = await openModelDir(join(root, 'model'));
const options: Omit<RunOptions, 'config'> = {
  model,
  examples: demoExamples(model.tokenizer, demoTaskData(32, 4, 2)),
  workerOutput: 'ignore',
  progress: false,
  log: () => {},
};
const lora = checkLoraConfig({ r: 2, alpha: 4 });
const train = checkTrainConfig({ steps: 300, globalBatch: 4, microBatch: 2, seed: 2 });
/** The run's config: this file's settings (one local worker), with these deployment fields and limits over them. */
const config = (deployment: Partial<Deployment>, limits?: RunConfigInput['limits']): RunConfigInput => ({
  run: { lora, train },
  deployment: {
    outDir: join(root, 'runs'),
    backend: 'wasm',
    cacheDir: join(root, 'cache'),
    localWorkers: 1,
    ...deployment,
  },
  limits,
});
let clean: RunResult;
let attacked: Promise<RunResult>;
let wsUrl = '';
let httpUrl = '';
/** every line the attacked coordinator logged */
const logged: string[] = [];
/** the attacked run's last finished step */
let attackedStep = 0;

before(async () => {
  clean = await runTraining({ ...options, config: config({ runId: 'clean', inProcess: true, localWorkers: 0 }) });
  const listening = signal<{ wsUrl: string; url: string }>();
  attacked = runTraining({
    // The honest worker is slowed (50 ms per micro-batch) so the run outlasts the attacks.
    ...options,
    config: config(
      { runId: 'attacked', token: TOKEN, adminToken: 'admin-secret', allowedOrigins: ['http://good.example'] },
      { security: { maxMessagesPerSecond: 100, maxRejects: 20, handshakeTimeoutMs: 800 } },
    ),
    workerEnv: () => ({ LORAMESH_FAULT: 'delay:50' }),
    log: (line) => logged.push(line),
    onListening: (urls) => listening.resolve(urls),
    onStep: (m) => {
      attackedStep = m.step;
    },
  });
  const endedFirst = attacked.then(() => {
    throw new Error('the run ended before it listened');
  });
  ({ wsUrl, url: httpUrl } = await Promise.race([listening.promise, endedFirst]));
});

after(async () => {
  const result = await attacked;
  assert.equal(maxAbsDiff(result.adapter, clean.adapter), 0, 'the attacks must not change the run');
  rmSync(root, { recursive: true, force: true });
});

/** Status code and loramesh error header of a refused upgrade. */
function refused(headers: Record<string, string>): Promise<{ status: number; code: string | undefined }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl, { headers });
    ws.on('unexpected-response', (_req, res) =>
      resolve({ status: res.statusCode ?? 0, code: res.headers['x-loramesh-error'] as string | undefined }),
    );
    ws.on('open', () => reject(new Error('the upgrade was accepted')));
    ws.on('error', () => {});
  });
}

/** A raw authenticated client that records every decoded message and how the socket closed. */
async function rawClient(): Promise<{ ws: WebSocket; messages: Message[]; closed: Promise<number> }> {
  const ws = new WebSocket(wsUrl, { headers: { authorization: `Bearer ${TOKEN}` } });
  const messages: Message[] = [];
  ws.on('message', (data) => messages.push(decodeMessage(new Uint8Array(data as Buffer))));
  const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
  ws.on('error', () => {});
  await new Promise((r, j) => {
    ws.once('open', r);
    ws.once('error', j);
  });
  return { ws, messages, closed };
}

const rejects = (messages: Message[]) =>
  messages.filter((m): m is Extract<Message, { type: 'reject' }> => m.type === 'reject').map((m) => m.code);

test('no token: 401 LM_ERR_AUTH before any WebSocket exists', async () => {
  assert.deepEqual(await refused({}), { status: 401, code: 'LM_ERR_AUTH' });
});

test('wrong token: 401 LM_ERR_AUTH', async () => {
  assert.deepEqual(await refused({ authorization: 'Bearer nope' }), { status: 401, code: 'LM_ERR_AUTH' });
});

test('wrong origin: 403 LM_ERR_ORIGIN even with the right token', async () => {
  assert.deepEqual(await refused({ authorization: `Bearer ${TOKEN}`, origin: 'http://evil.example' }), {
    status: 403,
    code: 'LM_ERR_ORIGIN',
  });
});

test(
  "a result for an old parameter version and one for someone else's assignment are refused; " +
    'the micro-batch goes elsewhere',
  async () => {
    // Join after a few steps, so an "old" parameter version exists.
    await until(() => attackedStep >= 3, 'the attacked run to reach step 3', 60_000);
    const c = await rawClient();
    c.ws.send(
      encodeMessage({ type: 'hello', protocol: PROTOCOL_VERSION, backend: 'wasm', platform: 'node', name: 'mallory' }),
    );
    await until(() => c.messages.some((m) => m.type === 'welcome'), 'welcome');
    c.ws.send(encodeMessage({ type: 'ready', paramVersion: 0 }));
    const assigns = () =>
      c.messages.filter((m): m is Extract<Message, { type: 'assign' }> => m.type === 'assign' && m.paramVersion > 0);
    await until(() => assigns().length > 0, 'an assignment for a newer parameter version');
    const assign = assigns()[0];
    const welcome = c.messages.find((m): m is Extract<Message, { type: 'welcome' }> => m.type === 'welcome')!;
    const grads = {
      codec: 'f32' as const,
      values: new Float32Array(welcome.manifest.adapter.reduce((n, t) => n + t.shape[0] * t.shape[1], 0)),
    };
    const result = {
      type: 'result' as const,
      assignmentId: 'someone-elses',
      paramVersion: assign.paramVersion,
      tokenCount: 1,
      lossSum: 0,
      computeMs: 1,
      grads,
    };
    c.ws.send(encodeMessage(result));
    c.ws.send(encodeMessage({ ...result, assignmentId: assign.assignmentId, paramVersion: assign.paramVersion - 1 }));
    await until(() => rejects(c.messages).length >= 2, 'two rejects');
    assert.deepEqual(rejects(c.messages).slice(0, 2), ['LM_ERR_ASSIGNMENT', 'LM_ERR_STALE']);
    c.ws.close();
  },
);

test('an oversized frame closes the socket with 1009', async () => {
  const c = await rawClient();
  c.ws.send(new Uint8Array(8 * 1024 * 1024));
  assert.equal(await c.closed, 1009);
});

test('slow-loris: a request head dribbled byte by byte is cut off by the headers timeout', async () => {
  const { port } = new URL(httpUrl);
  const socket = connect(Number(port), '127.0.0.1');
  socket.on('error', () => {}); // EPIPE once the server hangs up is the expected outcome
  const started = Date.now();
  const head = `GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n`;
  let i = 0;
  const drip = setInterval(() => {
    if (i < head.length && !socket.destroyed) socket.write(head[i++]);
  }, 200);
  await new Promise((r) => socket.on('close', r));
  clearInterval(drip);
  assert.ok(Date.now() - started < 5000, `held open ${Date.now() - started} ms with an 800 ms limit`);
  assert.ok(i < head.length, 'the server waited for the whole dribbled head');
});

test('a socket that never says hello is closed with LM_ERR_LIMIT', async () => {
  const c = await rawClient();
  assert.equal(await c.closed, 1008);
  assert.deepEqual(rejects(c.messages), ['LM_ERR_LIMIT']);
});

test('a message flood is rate-limited (LM_ERR_RATE) and the connection quarantined (LM_ERR_QUARANTINED)', async () => {
  const c = await rawClient();
  c.ws.send(
    encodeMessage({ type: 'hello', protocol: PROTOCOL_VERSION, backend: 'wasm', platform: 'node', name: 'flood' }),
  );
  const beat = encodeMessage({ type: 'heartbeat', sentAt: 0 });
  for (let i = 0; i < 2000; i++) c.ws.send(beat);
  assert.equal(await c.closed, 1008);
  const codes = rejects(c.messages);
  assert.ok(codes.includes('LM_ERR_RATE'), codes.join());
  assert.equal(codes[codes.length - 1], 'LM_ERR_QUARANTINED');
});

test('path traversal on the HTTP endpoints gets 404', async () => {
  for (const path of [
    '/files/../../../etc/passwd',
    '/files/..%2f..%2fetc%2fpasswd',
    '/assets/../../package.json',
    '/wasm/../../package.json',
    `/files/${'0'.repeat(64)}`,
    '/%2e%2e/%2e%2e/etc/passwd',
  ]) {
    const res = await fetch(httpUrl + path);
    assert.equal(res.status, 404, path);
  }
});

test(
  'admin actions need the admin token (the join token is not enough); ' +
    'pause holds the run, resume continues, kick removes a worker',
  async () => {
    const post = (path: string, token?: string) =>
      fetch(`${httpUrl}/api/admin/${path}`, {
        method: 'POST',
        headers: token ? { authorization: `Bearer ${token}` } : {},
      });
    assert.equal((await post('pause')).status, 401);
    assert.equal((await post('pause', TOKEN)).status, 401);
    assert.equal((await fetch(`${httpUrl}/api/admin/pause`)).status, 405);
    const stepOf = async () => (await (await fetch(`${httpUrl}/api/status`)).json()).step as number;
    const pausedLine = () => logged.find((l) => /^paused after step \d+$/.test(l));
    assert.equal((await post('pause', 'admin-secret')).status, 200);
    await until(() => pausedLine() !== undefined, 'the run to pause after its step in flight');
    const held = await stepOf();
    assert.equal(pausedLine(), `paused after step ${held}`);
    // "No step while paused" is a claim about a stretch of time, so it is watched over a bounded
    // window (several step times of this run) rather than waited for as an event.
    await observeFor(600);
    assert.equal(await stepOf(), held, 'no step while paused');
    assert.equal((await post('resume', 'admin-secret')).status, 200);
    await until(() => logged.includes('resumed'), 'the run to resume');
    const c = await rawClient();
    c.ws.send(
      encodeMessage({ type: 'hello', protocol: PROTOCOL_VERSION, backend: 'wasm', platform: 'node', name: 'kick-me' }),
    );
    await until(() => c.messages.some((m) => m.type === 'welcome'), 'welcome');
    const id = (c.messages.find((m) => m.type === 'welcome') as Extract<Message, { type: 'welcome' }>).workerId;
    assert.equal((await post(`kick?worker=${id}`, 'admin-secret')).status, 200);
    assert.equal(await c.closed, 1008);
    assert.deepEqual(rejects(c.messages), ['LM_ERR_QUARANTINED']);
    assert.equal((await post('kick?worker=nobody', 'admin-secret')).status, 404);
    const before = await stepOf();
    await until(async () => (await stepOf()) > before, `a step after ${before} (the run goes on)`, 30_000, 50);
    assert.ok((await stepOf()) > before, 'the run goes on after resume');
  },
);

test('--dashboard-access admin: run status needs the admin token', async () => {
  let url = '';
  let status: number[] = [];
  await runTraining({
    ...options,
    config: {
      ...config({ runId: 'private', localWorkers: 1, adminToken: 'admin-secret', dashboardAccess: 'admin' }),
      run: { lora, train: checkTrainConfig({ steps: 3, globalBatch: 4, microBatch: 2, seed: 2 }) },
    },
    onListening: (urls) => {
      url = urls.url;
    },
    onStep: async (m) => {
      if (m.step !== 1) return;
      status = [
        (await fetch(`${url}/api/status`)).status,
        (await fetch(`${url}/api/status`, { headers: { authorization: `Bearer ${TOKEN}` } })).status,
        (await fetch(`${url}/api/status`, { headers: { authorization: 'Bearer admin-secret' } })).status,
        (await fetch(`${url}/`)).status,
      ];
    },
  });
  assert.deepEqual(status, [401, 401, 200, 200]);
});

test(
  'log and terminal injection: ' + 'control characters in hello fields never reach a log line or the dashboard',
  async () => {
    const c = await rawClient();
    const forged = 'mallory\nstep 300/300 loss 0.0000\u001b[2J\u001b]0;pwned\u0007\u009b1m\u202e';
    c.ws.send(
      encodeMessage({
        type: 'hello',
        protocol: PROTOCOL_VERSION,
        backend: `wasm\r\n${forged}`,
        platform: 'node',
        name: forged,
        adapter: `\u001b[31m${forged}`,
      }),
    );
    const welcome = () => c.messages.find((m): m is Extract<Message, { type: 'welcome' }> => m.type === 'welcome');
    await until(() => welcome() !== undefined, 'welcome');
    const id = welcome()!.workerId;
    const mine = logged.filter((l) => l.includes(id));
    assert.ok(
      mine.some((l) => l.includes('mallory step 300/300 loss 0.0000')),
      mine.join('\n'),
    );
    for (const line of logged)
      assert.doesNotMatch(line, /[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/, JSON.stringify(line));
    const status = (await (await fetch(`${httpUrl}/api/status`)).json()) as {
      workers: { id: string; name: string; backend: string; adapter: string }[];
    };
    const shown = status.workers.find((w) => w.id === id)!;
    for (const text of [shown.name, shown.backend, shown.adapter])
      assert.doesNotMatch(text, /[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/);
    c.ws.close();
  },
);

test(
  'a worker-error flood naming no held assignment counts as rejected frames: ' +
    'the sender is quarantined after --max-rejects of them',
  async () => {
    const c = await rawClient();
    c.ws.send(
      encodeMessage({
        type: 'hello',
        protocol: PROTOCOL_VERSION,
        backend: 'wasm',
        platform: 'node',
        name: 'error-flood',
      }),
    );
    await until(() => c.messages.some((m) => m.type === 'welcome'), 'welcome');
    for (let i = 0; i < 40; i++)
      c.ws.send(
        encodeMessage({
          type: 'worker-error',
          code: 'LM_ERR_STALE',
          message: 'nope',
          ...(i % 2 ? { assignmentId: `fake-${i}` } : {}),
        }),
      );
    assert.equal(await c.closed, 1008);
    const codes = rejects(c.messages);
    // --max-rejects 20 in this run
    assert.equal(codes.filter((x) => x === 'LM_ERR_ASSIGNMENT').length, 20, codes.join());
    assert.equal(codes[codes.length - 1], 'LM_ERR_QUARANTINED');
  },
);
