// ≥ 100,000 random and mutated frames at a live coordinator while it trains (what they are:
// test/helpers/fuzz-frames.ts). Four raw connections send in batches with backpressure, a fifth
// ("mallory") joins, takes real assignments and answers each with a broken result. The coordinator
// must never throw, must answer every frame it read with exactly one reject carrying the code the
// frame deserves (or close with 1002/1007/1009 where the frame calls for it), and the run must end
// with the clean run's adapter, bit for bit. One exception, by the coordinator's design: a broken
// result for a step that a copy already finished is dropped unchecked, without a reply (tallied as
// "no reply (its step was over)"). The seed is printed; LORAMESH_FUZZ_SEED replays it
// (LORAMESH_FUZZ_FRAMES changes the count).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { ErrorCodes, LoraMeshError, type ErrorCode } from '../../shared/errors.ts';
import { adapterSpec, maxAbsDiff } from '../../shared/lora/adapter.ts';
import { decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import { PROTOCOL_VERSION, type Assign, type Message } from '../../shared/protocol/messages.ts';
import { mixSeed, Rng } from '../../shared/rng.ts';
import { tokenCount } from '../../shared/train/micro-batch.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { Deployment, RunConfigInput } from '../../coordinator/run/run-config.ts';
import { runTraining, type RunOptions } from '../../coordinator/run/train.ts';
import { badResult, FrameFactory, type ConnState, type Frame, type TensorSpec } from '../helpers/fuzz-frames.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

// CI uses a fixed seed (a submission must not pass or fail by luck); elsewhere each run explores a new one.
const SEED = Number(process.env.LORAMESH_FUZZ_SEED ?? (process.env.CI ? 578335813 : randomInt(2 ** 31)));
const FRAMES = Number(process.env.LORAMESH_FUZZ_FRAMES ?? 100_000);
const PEERS = 4; // peer 0 has said hello (state 'joined'), the others never do ('fresh')
const BATCH = 250; // frames per batch; at most one batch per connection waits for its replies
const MAX_FRAME = 64 * 1024; // generated frames stay below the coordinator's maxPayload (~75 KB here)…
const OVERSIZED: [number, number] = [256 * 1024, 2 * 1024 * 1024]; // …except these
const HELD_RESULTS = 2000; // at most this many broken results for assignments mallory holds
console.log(`fuzz seed ${SEED} (replay: LORAMESH_FUZZ_SEED=${SEED} npm test -- fuzz)`);

// The coordinator runs in this process: anything it throws past its handlers lands here.
const faults: string[] = [];
process.on('uncaughtException', (err) => faults.push(`uncaughtException: ${err?.stack ?? err}`));
process.on('unhandledRejection', (err) => faults.push(`unhandledRejection: ${(err as Error)?.stack ?? err}`));

const lora = checkLoraConfig({ r: 2, alpha: 4 });
const train = checkTrainConfig({ steps: 30, globalBatch: 8, microBatch: 2, seed: 5 });
let root = '';
let base: Omit<RunOptions, 'config'>;
let adapter: TensorSpec[];
before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-fuzz-'));
  writeTinyModelDir(join(root, 'model'), 5);
  const model = await openModelDir(join(root, 'model'));
  base = {
    model,
    examples: demoExamples(model.tokenizer, demoTaskData(32, 4, 5)),
    workerOutput: 'ignore',
    progress: false,
    log: () => {},
  };
  adapter = adapterSpec(model.config, lora).map((t) => ({ name: t.name, shape: t.shape }));
});
after(() => rmSync(root, { recursive: true, force: true }));

/** The run's config: this file's settings (one local worker), with the given deployment fields and limits. */
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

/** What was sent, what came back, and what went wrong, across all connections. */
class Report {
  sent = 0;
  replies = 0;
  reconnects = 0;
  failures: string[] = [];
  private failureCount = 0;
  readonly outcomes = new Map<string, Map<string, number>>();

  tally(category: string, outcome: string): void {
    const byOutcome = this.outcomes.get(category) ?? new Map<string, number>();
    byOutcome.set(outcome, (byOutcome.get(outcome) ?? 0) + 1);
    this.outcomes.set(category, byOutcome);
  }

  fail(line: string): void {
    if (++this.failureCount <= 30) this.failures.push(line);
  }

  get failed(): number {
    return this.failureCount;
  }

  summary(): string {
    return [...this.outcomes]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(
        ([category, byOutcome]) =>
          `  ${category.padEnd(26)} ${[...byOutcome]
            .sort((a, b) => b[1] - a[1])
            .map(([o, n]) => `${o.replace('LM_ERR_', '')}×${n}`)
            .join(' ')}`,
      )
      .join('\n');
  }
}

const hex = (data: Uint8Array | string) =>
  typeof data === 'string'
    ? JSON.stringify(data.slice(0, 40))
    : Buffer.from(data.subarray(0, 40)).toString('hex') + (data.length > 40 ? `… (${data.length} bytes)` : '');

interface Expected {
  code: ErrorCode;
  category: string;
  frame: Uint8Array | string;
  optional?: boolean;
}

/** A raw client that matches the coordinator's rejects, in order, against the codes its frames deserve. */
class Peer {
  readonly ws: WebSocket;
  readonly messages: Message[] = [];
  readonly closed: Promise<number>;
  closeCode: number | null = null;
  private expected: Expected[] = [];
  private next = 0;
  private wake: (() => void) | null = null;

  constructor(
    url: string,
    readonly label: string,
    private readonly report: Report,
  ) {
    this.ws = new WebSocket(url);
    this.ws.on('message', (data, isBinary) => this.onReply(data as Buffer, isBinary));
    this.ws.on('error', () => {}); // a reset after the server closed the socket is expected
    this.closed = new Promise((resolve) =>
      this.ws.on('close', (code) => {
        this.closeCode = code;
        resolve(code);
        this.wake?.();
      }),
    );
  }

  static async open(url: string, label: string, report: Report, state: ConnState): Promise<Peer> {
    const peer = new Peer(url, label, report);
    await new Promise((resolve, reject) => {
      peer.ws.once('open', resolve);
      peer.ws.once('error', reject);
    });
    if (state === 'joined') {
      peer.ws.send(
        encodeMessage({ type: 'hello', protocol: PROTOCOL_VERSION, backend: 'fuzz', platform: 'node', name: label }),
      );
      if (!(await peer.until(() => peer.messages.some((m) => m.type === 'welcome'), 15_000)))
        throw new Error(`${label}: no welcome after hello`);
    }
    return peer;
  }

  expect(e: Expected): void {
    this.expected.push(e);
  }

  /** Every expected reject has arrived. */
  get settled(): boolean {
    return this.next >= this.expected.length;
  }

  /** Expected rejects not received yet. */
  get outstanding(): number {
    return this.expected.length - this.next;
  }

  /** The expectations not met yet, for the failure message. */
  pending(): string {
    return this.expected
      .slice(this.next, this.next + 3)
      .map((e) => `${e.category} → ${e.code} [${hex(e.frame)}]`)
      .join('; ');
  }

  /** Forgets met expectations (they hold the frames). */
  reset(): void {
    this.expected = this.expected.slice(this.next);
    this.next = 0;
  }

  /** Resolves true once `condition` holds, false on timeout or when the socket closed first. */
  async until(condition: () => boolean, ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (!condition()) {
      if (this.closeCode !== null || Date.now() > end) return condition();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return true;
  }

  private onReply(data: Buffer, isBinary: boolean): void {
    let message: Message;
    try {
      if (!isBinary) throw new Error('text frame');
      message = decodeMessage(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    } catch (err) {
      this.report.fail(
        `${this.label}: the coordinator sent a frame its own protocol refuses ` +
          `(${(err as Error).message.slice(0, 200)})`,
      );
      return;
    }
    if (message.type === 'reject') this.match(message.code, message.message);
    else this.messages.push(message);
    this.wake?.();
  }

  private match(code: string, why: string): void {
    this.report.replies++;
    for (;;) {
      const e = this.expected[this.next++];
      if (!e) return this.report.fail(`${this.label}: a reject nothing asked for: ${code} (${why.slice(0, 200)})`);
      if (e.code === code) return this.report.tally(e.category, code);
      if (e.optional) {
        this.report.tally(e.category, 'no reply (its step was over)');
        continue;
      }
      return this.report.fail(
        `${this.label}: ${e.category} [${hex(e.frame)}] deserves ${e.code}, got ${code} (${why.slice(0, 200)})`,
      );
    }
  }
}

async function drained(ws: WebSocket): Promise<void> {
  while (ws.bufferedAmount > 0 && ws.readyState === ws.OPEN) await sleep(1);
}

/** One connection's share of the fuzz: batches of generated frames, a reconnect after each frame that closes it. */
async function fuzzPeer(url: string, index: number, budget: number, report: Report): Promise<void> {
  const label = `peer${index}`;
  const state: ConnState = index === 0 ? 'joined' : 'fresh';
  const factory = new FrameFactory(new Rng(mixSeed(SEED, index)), adapter, MAX_FRAME, OVERSIZED);
  let peer = await Peer.open(url, label, report, state);
  for (let sent = 0; sent < budget; ) {
    const batch: Frame[] = [];
    while (batch.length < BATCH && sent + batch.length < budget) {
      const frame = factory.next(state);
      batch.push(frame);
      if (frame.outcome.kind === 'close') break; // nothing after it would be read
    }
    // Backpressure: at most one earlier batch still unanswered, and nothing left in our send buffer.
    if (!(await peer.until(() => peer.outstanding <= BATCH, 20_000))) {
      report.fail(
        `${label}: replies missing ` +
          `(socket ${peer.closeCode === null ? 'open' : `closed ${peer.closeCode}`}): ${peer.pending()}`,
      );
      return;
    }
    peer.reset();
    for (const f of batch) {
      const code = f.outcome.kind === 'reject' || f.outcome.kind === 'close' ? f.outcome.code : null;
      if (code) peer.expect({ code, category: f.category, frame: f.data });
      else if (f.outcome.kind === 'none') {
        report.tally(f.category, 'none (accepted)');
      }
      peer.ws.send(f.data, { binary: f.binary });
    }
    sent += batch.length;
    report.sent += batch.length;
    await drained(peer.ws);
    const last = batch[batch.length - 1];
    if (last.outcome.kind === 'close') {
      const code = await Promise.race([peer.closed, sleep(15_000, -1, { ref: false })]);
      if (code !== last.outcome.closeCode)
        report.fail(
          `${label}: ${last.category} [${hex(last.data)}] should close with ${last.outcome.closeCode}, got ${code}`,
        );
      else report.tally(last.category, `close ${code}`);
      if (!peer.settled) report.fail(`${label}: replies missing before the close: ${peer.pending()}`);
      peer = await Peer.open(url, label, report, state);
      report.reconnects++;
    }
  }
  if (!(await peer.until(() => peer.settled, 20_000)))
    report.fail(`${label}: replies missing at the end: ${peer.pending()}`);
  peer.ws.close();
}

/**
 * Joins, says ready, and answers every assignment with a broken result (after, sometimes, a result
 * for an assignment it does not hold), then a sentinel of unknown type. The broken result's reply is
 * optional: when a copy on the honest worker already finished the step, the late result is dropped.
 */
async function mallory(url: string, report: Report, stop: () => boolean): Promise<number> {
  const rng = new Rng(mixSeed(SEED, 1000));
  const peer = await Peer.open(url, 'mallory', report, 'joined');
  const welcome = peer.messages.find((m): m is Extract<Message, { type: 'welcome' }> => m.type === 'welcome')!;
  const spec = welcome.manifest.adapter;
  let seen = 0;
  const nextAssign = (): Assign | undefined => {
    for (; seen < peer.messages.length; seen++)
      if (peer.messages[seen].type === 'assign') return peer.messages[seen++] as Assign;
    return undefined;
  };
  peer.ws.send(encodeMessage({ type: 'ready', paramVersion: -1 }));
  const previous: string[] = [];
  let held = 0;
  while (held < HELD_RESULTS && !stop() && peer.closeCode === null) {
    const assign = nextAssign();
    if (!assign) {
      await peer.until(() => stop() || peer.messages.length > seen, 200);
      continue;
    }
    const bad = badResult(rng, assign, spec, tokenCount(assign.microBatch));
    const frames: { message: Record<string, unknown>; expected: Omit<Expected, 'frame'> }[] = [];
    if (rng.next() < 0.3) {
      const notMine =
        previous.length > 0 && rng.next() < 0.5 ? previous[rng.int(previous.length)] : `not-yours-${rng.int(1e6)}`;
      frames.push({
        message: { ...bad.message, assignmentId: notMine },
        expected: { code: ErrorCodes.ASSIGNMENT, category: 'held:not-your-assignment' },
      });
    }
    frames.push({ message: bad.message, expected: { code: bad.code, category: bad.category, optional: true } });
    frames.push({
      message: { type: 'mallory-sentinel' },
      expected: { code: ErrorCodes.UNKNOWN_TYPE, category: 'held:sentinel' },
    });
    for (const f of frames) {
      const bytes = encodeMessage(f.message as never);
      peer.expect({ ...f.expected, frame: bytes });
      peer.ws.send(bytes);
    }
    report.sent += frames.length;
    if (!(await peer.until(() => peer.settled, 20_000))) {
      report.fail(`mallory: replies missing: ${peer.pending()}`);
      break;
    }
    peer.reset();
    previous.push(assign.assignmentId);
    held++;
  }
  peer.ws.close();
  return held;
}

test(`${FRAMES} fuzzed frames at a live coordinator: one reject with the deserved code each, no crash, same adapter`, {
  timeout: 300_000,
}, async () => {
  const started = performance.now();
  const clean = await runTraining({ ...base, config: config({ runId: 'clean', inProcess: true, localWorkers: 0 }) });
  let url = '';
  let step = 0;
  let fuzzOver = false;
  let fuzzing!: () => void;
  const firstStep = new Promise<void>((resolve) => (fuzzing = resolve));
  let finishFuzz!: () => void;
  const fuzzFinished = new Promise<void>((resolve) => (finishFuzz = resolve));
  const report = new Report();
  const running = runTraining({
    // The honest worker takes 100 ms per micro-batch; meanwhile mallory is handed the others, again and again.
    ...base,
    workerEnv: () => ({ LORAMESH_FAULT: 'delay:100' }),
    config: config(
      { runId: 'fuzzed' },
      // No quarantine and no rate limit: every frame must be read and answered on its own merits.
      { security: { maxRejects: Infinity, maxMessagesPerSecond: Infinity, handshakeTimeoutMs: 600_000 } },
    ),
    onListening: ({ wsUrl }) => {
      url = wsUrl;
    },
    onStep: async (m) => {
      step = m.step;
      if (m.step === 1) fuzzing();
      // Paced: step k waits for k/(steps − 1) of the frames, so the fuzz spans the whole run and the
      // run cannot end before the fuzz does.
      const share = Math.ceil((FRAMES * m.step) / (train.steps - 1));
      while (report.sent < share && !fuzzOver) await sleep(20);
      if (m.step === train.steps - 1) await fuzzFinished;
    },
  });
  await Promise.race([
    firstStep,
    running.then(() => {
      throw new Error('the run ended before its first step');
    }),
  ]);

  const fuzzStart = performance.now();
  const stepAtStart = step;
  let peersDone = false;
  const malloryDone = mallory(url, report, () => peersDone);
  const perPeer = Math.ceil(FRAMES / PEERS);
  await Promise.all(Array.from({ length: PEERS }, (_, i) => fuzzPeer(url, i, perPeer, report)));
  peersDone = true;
  const held = await malloryDone;
  const stepAtEnd = step;
  const fuzzSeconds = (performance.now() - fuzzStart) / 1000;
  fuzzOver = true;
  finishFuzz();
  const fuzzed = await running;

  console.log(
    `fuzz seed ${SEED}: ${report.sent} frames (${held} broken results for held assignments) ` +
      `in ${fuzzSeconds.toFixed(1)} s ` +
      `during steps ${stepAtStart}–${stepAtEnd}; ${report.replies} rejects, ${report.reconnects} reconnects; ` +
      `whole test ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
  console.log(`outcomes by category:\n${report.summary()}`);
  assert.deepEqual(faults, [], 'nothing may escape the coordinator');
  assert.equal(report.failed, 0, `${report.failed} failures (seed ${SEED}):\n${report.failures.join('\n')}`);
  assert.ok(report.sent >= FRAMES, `${report.sent} frames sent`);
  assert.ok(stepAtEnd > stepAtStart, `the run should train while the fuzz runs (steps ${stepAtStart}–${stepAtEnd})`);
  assert.ok(held >= 10, `mallory should have broken results for ${held} ≥ 10 held assignments`);
  assert.equal(fuzzed.metrics.length, train.steps);
  assert.equal(maxAbsDiff(fuzzed.adapter, clean.adapter), 0, 'the fuzzed run must end with the clean adapter');
});

test('crafted frames that once cost seconds or broke the reject limit are refused quickly and briefly', () => {
  // A structured-clone DAG (ids 0x69, pointers 0x70) doubling tenfold per level:
  // 1.4 KB whose JSON view would be ~10^9 chars.
  const id = (n: number) => [0xd6, 0x69, 0, 0, 0, n];
  const ptr = (n: number) => [0xd6, 0x70, 0, 0, 0, n];
  const bomb: number[] = [0x97, ...id(0), 0xda, 0x03, 0xe8, ...new Array(1000).fill(0x61)];
  for (let l = 1; l <= 6; l++) bomb.push(...id(l), 0x9a, ...Array.from({ length: 10 }, () => ptr(l - 1)).flat());
  bomb.push(0xc0);
  // A RegExp extension with a 5,000-char invalid pattern (its SyntaxError echoes the pattern).
  const regexp = [0xd4, 0x78, 0x00, ...encodeMessage(['('.repeat(5000), 'g'] as never)];
  // A tensor map keyed by a 5,000-char name.
  const longKey = encodeMessage({
    type: 'result',
    assignmentId: 'a',
    paramVersion: 0,
    tokenCount: 0,
    lossSum: 0,
    computeMs: 0,
    grads: { ['k'.repeat(5000)]: 1 },
  } as unknown as Message);
  const cases: [string, Uint8Array, ErrorCode][] = [
    ['clone bomb', Uint8Array.from(bomb), ErrorCodes.DECODE],
    ['long regexp', Uint8Array.from(regexp), ErrorCodes.DECODE],
    ['long key', longKey, ErrorCodes.FIELD],
    ['0xC1 alone', Uint8Array.of(0xc1), ErrorCodes.DECODE],
    ['a Date', Uint8Array.of(0xd6, 0xff, 0, 0, 0, 1), ErrorCodes.DECODE],
    ['a Set', Uint8Array.of(0xd4, 0x73, 0x00, 0x90), ErrorCodes.DECODE],
    [
      'grads as a Set',
      encodeMessage({
        type: 'result',
        assignmentId: 'a',
        paramVersion: 0,
        tokenCount: 0,
        lossSum: 0,
        computeMs: 0,
        grads: new Set(),
      } as unknown as Message),
      ErrorCodes.FIELD,
    ],
  ];
  for (const [name, bytes, code] of cases) {
    const t = performance.now();
    const err = (() => {
      try {
        decodeMessage(bytes);
      } catch (e) {
        return e;
      }
    })();
    const ms = performance.now() - t;
    assert.ok(err instanceof LoraMeshError, name);
    assert.equal(err.code, code, `${name}: ${err.message.slice(0, 120)}`);
    assert.ok(ms < 100, `${name} took ${ms.toFixed(0)} ms`);
    // the mesh sends `err.message` in a reject, whose message must stay within 4096 chars
    assert.doesNotThrow(() => decodeMessage(encodeMessage({ type: 'reject', code, message: err.message })), name);
  }
});
