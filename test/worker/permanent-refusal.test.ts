// A worker stops retrying on answers that cannot change and says why; it keeps retrying the rest.
// Fake coordinators on real sockets: one refuses every upgrade with an HTTP status (as server.ts
// does), one accepts, waits for hello and answers a reject frame then a close (as mesh.ts does).
// The wrong-token case runs the real CLI to check the exit code (2) and the single line it prints.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';
import { LoraMeshError, type ErrorCode } from '../../shared/errors.ts';
import { decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import type { Message } from '../../shared/protocol/messages.ts';
import { runNodeWorker } from '../../worker/node.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const cacheDir = mkdtempSync(join(tmpdir(), 'loramesh-refusal-'));
after(() => rmSync(cacheDir, { recursive: true, force: true }));

interface FakeCoordinator {
  url: string;
  /** upgrade requests seen, refused or not */
  attempts: number;
  close(): Promise<void>;
}

/** [HTTP status, X-Loramesh-Error] to refuse an upgrade, or 'accept' */
type Verdict = [number, string] | 'accept';
type OnHello = (send: (message: Message) => void, close: (code: number, reason: string) => void) => void;

/**
 * Answers upgrade number n (1-based) with `answer(n)`; an accepted socket gets `onHello` once the
 * worker's hello arrives.
 */
async function fakeCoordinator(answer: (n: number) => Verdict, onHello: OnHello = () => {}): Promise<FakeCoordinator> {
  const http: Server = createServer((_req, res) => res.writeHead(404).end());
  const wss = new WebSocketServer({ noServer: true });
  const fake: FakeCoordinator = { url: '', attempts: 0, close: async () => {} };
  http.on('upgrade', (req, socket, head) => {
    const verdict = answer(++fake.attempts);
    if (verdict !== 'accept') {
      const [status, code] = verdict;
      socket.end(`HTTP/1.1 ${status} Refused\r\nConnection: close\r\nX-Loramesh-Error: ${code}\r\n\r\n${code}\n`);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.once('message', (data) => {
        assert.equal(decodeMessage(new Uint8Array(data as Buffer)).type, 'hello');
        onHello(
          (m) => ws.send(encodeMessage(m)),
          (code, reason) => ws.close(code, reason),
        );
      });
    });
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  fake.url = `ws://127.0.0.1:${(http.address() as AddressInfo).port}/ws`;
  fake.close = async () => {
    for (const ws of wss.clients) ws.terminate();
    http.closeAllConnections();
    await new Promise((resolve) => http.close(resolve));
  };
  return fake;
}

/** runNodeWorker's rejection, which must be a LoraMeshError; the worker's log lines go to `lines`. */
async function workerFails(url: string, lines: string[] = []): Promise<LoraMeshError> {
  const log = (line: string) => lines.push(line);
  const worker = runNodeWorker({ url, backend: 'cpu', cacheDir, token: 'wrong', maxRetries: 3, log });
  const err = await worker.then(
    () => assert.fail('the worker should have stopped with an error'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof LoraMeshError, `expected a LoraMeshError, got ${err}`);
  return err;
}

test('wrong token: the CLI worker exits 2 after one attempt and says why in a line', async () => {
  const coordinator = await fakeCoordinator(() => [401, 'LM_ERR_AUTH']);
  const args = ['worker', coordinator.url, '--token', 'wrong', '--backend', 'cpu', '--cache-dir', cacheDir];
  const child = spawn(process.execPath, ['--import', 'tsx', 'coordinator/cli.ts', ...args], { cwd: ROOT });
  try {
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    // A worker that retries forever never exits: give up on it after 30 s (it starts within seconds).
    const exitCode = await new Promise<number | null | 'still running'>((resolve) => {
      const timer = setTimeout(() => resolve('still running'), 30_000);
      child.on('exit', (code) => {
        clearTimeout(timer);
        resolve(code);
      });
    });
    const output = `stdout:\n${stdout}\nstderr:\n${stderr}`;
    assert.equal(exitCode, 2, output);
    const mentions = `${stdout}\n${stderr}`.split('\n').filter((l) => /401|token/i.test(l));
    assert.equal(mentions.length, 1, output);
    assert.match(mentions[0], /^loramesh: LM_ERR_AUTH: the coordinator refused the join token \(HTTP 401\)/);
    assert.ok(stderr.includes(mentions[0]), 'the reason goes to stderr');
    assert.equal(coordinator.attempts, 1, 'no retry');
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    await coordinator.close();
  }
});

test('forbidden origin (403 LM_ERR_ORIGIN) stops the worker after one attempt', async () => {
  const coordinator = await fakeCoordinator(() => [403, 'LM_ERR_ORIGIN']);
  try {
    const lines: string[] = [];
    const err = await workerFails(coordinator.url, lines);
    assert.equal(err.code, 'LM_ERR_ORIGIN');
    assert.match(err.message, /does not accept this worker's origin \(HTTP 403\)/);
    assert.equal(coordinator.attempts, 1);
    assert.ok(!lines.some((l) => /reconnecting/.test(l)), lines.join('\n'));
  } finally {
    await coordinator.close();
  }
});

const refusedAfterHello: { code: ErrorCode; closeCode: number; message: string; expect: RegExp }[] = [
  {
    code: 'LM_ERR_QUARANTINED',
    closeCode: 1008,
    message: 'failed a spot check',
    expect: /quarantined by the coordinator: failed a spot check$/,
  },
  {
    code: 'LM_ERR_PROTOCOL_VERSION',
    closeCode: 1002,
    message: 'protocol 1 is not supported; this coordinator speaks 2',
    expect: /another protocol version \(protocol 1 is not supported; this coordinator speaks 2\): update loramesh$/,
  },
  {
    code: 'LM_ERR_CODEC',
    closeCode: 1008,
    message: 'this run sends int8 up; the worker supports f32',
    expect: /lacks the run's wire codec or base format \(this run sends int8 up/,
  },
  {
    code: 'LM_ERR_ARITHMETIC',
    closeCode: 1008,
    message: 'this run computes with arithmetic relaxed-fma; the worker supports simd128',
    expect:
      /cannot compute with the run's arithmetic variant \(this run computes with arithmetic relaxed-fma; .*relaxed SIMD/,
  },
];

for (const { code, closeCode, message, expect } of refusedAfterHello) {
  test(`${code}: a reject frame and a close ${closeCode} stop the worker after one connection`, async () => {
    const coordinator = await fakeCoordinator(
      () => 'accept',
      (send, close) => {
        send({ type: 'reject', code, message });
        close(closeCode, code);
      },
    );
    try {
      const err = await workerFails(coordinator.url);
      assert.equal(err.code, code);
      assert.match(err.message, expect);
      assert.equal(coordinator.attempts, 1);
    } finally {
      await coordinator.close();
    }
  });
}

test('a close reason alone (no reject frame, as browsers with a bad token get) is enough', async () => {
  const coordinator = await fakeCoordinator(
    () => 'accept',
    (_send, close) => close(1008, 'LM_ERR_AUTH'),
  );
  try {
    const err = await workerFails(coordinator.url);
    assert.equal(err.code, 'LM_ERR_AUTH');
    assert.match(err.message, /refused the join token \(close 1008\)/);
    assert.equal(coordinator.attempts, 1);
  } finally {
    await coordinator.close();
  }
});

test('transient refusals are retried: 503 LM_ERR_LIMIT twice, a 1008 LM_ERR_LIMIT close, then the run', async () => {
  const coordinator = await fakeCoordinator(
    (n) => (n <= 2 ? [503, 'LM_ERR_LIMIT'] : 'accept'),
    (send, close) => {
      if (coordinator.attempts === 3) {
        // the coordinator's handshake timeout: a refusal that may pass on the next try
        send({ type: 'reject', code: 'LM_ERR_LIMIT', message: 'no hello within 800 ms' });
        close(1008, 'LM_ERR_LIMIT');
      } else {
        send({ type: 'done', reason: 'test over' });
      }
    },
  );
  try {
    const lines: string[] = [];
    const log = (line: string) => lines.push(line);
    const session = await runNodeWorker({ url: coordinator.url, backend: 'cpu', cacheDir, maxRetries: 3, log });
    assert.equal(session.finished, true);
    assert.equal(session.refused, null);
    assert.equal(coordinator.attempts, 4, lines.join('\n'));
    assert.equal(lines.filter((l) => l === 'connection refused: HTTP 503 LM_ERR_LIMIT').length, 2, lines.join('\n'));
    assert.equal(lines.filter((l) => /reconnecting in/.test(l)).length, 3, lines.join('\n'));
  } finally {
    await coordinator.close();
  }
});
