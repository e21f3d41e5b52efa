// The pool's mesh without sockets (coordinator/pool/pool-mesh.ts): in-memory workers speak the pool protocol
// (pool-welcome, run-open, channels carrying each run's own protocol) to a PoolMesh over two runs' real
// MeshExecutors. Each run's step sums in micro-batch order (the bits of aggregateInOrder) whoever computed
// what; a worker holds at most --runs-per-worker attempts and never two of one run; bad frames are refused
// with a code; a worker one run convicts leaves the pool, and that run refuses its name when it comes back.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MeshExecutor, type WorkItem } from '../../../coordinator/engine/mesh.ts';
import type { Peer, PeerEvents } from '../../../coordinator/engine/peer.ts';
import { PoolMesh } from '../../../coordinator/pool/pool-mesh.ts';
import { ErrorCodes } from '../../../shared/errors.ts';
import { decodeMessage, encodeMessage } from '../../../shared/protocol/codec.ts';
import { type Message, PROTOCOL_VERSION } from '../../../shared/protocol/messages.ts';
import { encodeFloats, F32 } from '../../../shared/protocol/wire-codec.ts';
import { aggregateInOrder } from '../../../shared/train/aggregate.ts';
import type { GradientResult } from '../../../shared/train/gradients.ts';
import { type MicroBatch, tokenCount } from '../../../shared/train/micro-batch.ts';
import { FrameFactory } from '../../helpers/fuzz-frames.ts';
import { honest, microBatches, SHAPES, tinyManifest } from '../../helpers/tiny-mesh.ts';
import { Rng } from '../../../shared/rng.ts';

const adapter = new Map(SHAPES.map(([name, [r, c]]) => [name, new Float32Array(r * c).fill(0.5)]));
const split = (g: Float32Array) =>
  new Map([
    ['m.lora_A', g.slice(0, 6)],
    ['m.lora_B', g.slice(6)],
  ]);

/** A pool worker in memory: answers each assignment with honest(index) (× `lie`), after `delayMs`. */
class FakeWorker implements Peer {
  bufferedAmount = 0;
  open = true;
  received: Message[] = [];
  events!: PeerEvents;
  /** attempts held now, and the most held at once, by run */
  holding = new Map<string, number>();
  maxHeld = 0;
  maxHeldOfOneRun = 0;
  computed: { run: string; index: number }[] = [];

  constructor(
    private readonly name: string,
    private readonly lie = 1,
    private readonly delayMs = 1,
    /** hello.multiRun: how many runs' attempts it offers to hold at once */
    private readonly multiRun = 4,
    /** run-opens to leave unanswered first (a worker too busy to say hello in time) */
    private ignoreOpens = 0,
  ) {}

  send(frame: Uint8Array): void {
    const m = decodeMessage(frame);
    this.received.push(m);
    if (m.type === 'pool-welcome') queueMicrotask(() => this.say({ type: 'ready', paramVersion: -1 }));
    if (m.type === 'run-open' && this.ignoreOpens > 0) this.ignoreOpens--;
    else if (m.type === 'run-open') {
      const hello = { type: 'hello', protocol: PROTOCOL_VERSION, backend: 'wasm', platform: 'node', name: this.name };
      this.channel(m.runId, hello as Message);
    }
    if (m.type !== 'channel') return;
    const inner = decodeMessage(m.frame);
    if (inner.type === 'welcome') this.channel(m.runId, { type: 'ready', paramVersion: -1 });
    if (inner.type !== 'assign') return;
    const held = (this.holding.get(m.runId) ?? 0) + 1;
    this.holding.set(m.runId, held);
    this.maxHeldOfOneRun = Math.max(this.maxHeldOfOneRun, held);
    this.maxHeld = Math.max(
      this.maxHeld,
      [...this.holding.values()].reduce((a, b) => a + b, 0),
    );
    setTimeout(() => {
      this.holding.set(m.runId, this.holding.get(m.runId)! - 1);
      this.computed.push({ run: m.runId, index: inner.index });
      const grads = honest(inner.index).map((x) => x * this.lie);
      this.channel(m.runId, {
        type: 'result',
        assignmentId: inner.assignmentId,
        paramVersion: inner.paramVersion,
        tokenCount: tokenCount(inner.microBatch),
        lossSum: 1,
        computeMs: 1,
        grads: encodeFloats(grads, F32),
      });
    }, this.delayMs);
  }
  close(): void {
    if (!this.open) return;
    this.open = false;
    queueMicrotask(() => this.events.close());
  }
  terminate(): void {
    this.close();
  }
  ping(): void {}
  say(m: Message): void {
    if (this.open) this.events.frame(encodeMessage(m), true);
  }
  channel(runId: string, inner: Message): void {
    this.say({ type: 'channel', runId, frame: encodeMessage(inner) });
  }
  join(pool: PoolMesh): this {
    this.events = pool.attach(this);
    const hello = { protocol: PROTOCOL_VERSION, backend: 'wasm', platform: 'node', name: this.name } as const;
    this.say({ type: 'hello', ...hello, multiRun: this.multiRun });
    return this;
  }
  rejects(): string[] {
    return this.received.flatMap((m) => (m.type === 'reject' ? [m.code] : []));
  }
}

/** A run on the pool: its mesh, with spot checks on every result when `checked` (recomputing honest(index)). */
function openRun(pool: PoolMesh, runId: string, weight: number, checked = false, handshakeMs?: number): MeshExecutor {
  const mesh = new MeshExecutor({
    manifest: tinyManifest(runId),
    ...(handshakeMs ? { security: { handshakeTimeoutMs: handshakeMs } } : {}),
    arbiter: pool.arbiter(runId, { weight, priority: 0 }),
    ...(checked
      ? {
          checks: {
            spotCheck: 1,
            probation: 0,
            outlierFactor: 0,
            tolerance: 1e-6,
            secret: 1,
            recompute: async (work: WorkItem): Promise<GradientResult> => {
              const index = microBatches.indexOf((work as { microBatch: MicroBatch }).microBatch);
              return { lossSum: 1, tokenCount: 3, grads: split(honest(index)) };
            },
          },
        }
      : {}),
  });
  mesh.publish(0, adapter);
  pool.open(runId, mesh);
  return mesh;
}

const expected = aggregateInOrder(
  microBatches.map((mb, i) => ({ lossSum: 1, tokenCount: tokenCount(mb), grads: split(honest(i)) })),
);

async function stepsOf(runs: MeshExecutor[]) {
  return Promise.all(runs.map((m) => m.compute(0, 0, microBatches)));
}

test('pool mesh: two runs on three workers sum in micro-batch order; one attempt per worker at a time', async () => {
  const pool = new PoolMesh({ manifest: tinyManifest('pool') });
  const workers = ['a', 'b', 'c'].map((n) => new FakeWorker(n).join(pool));
  const runs = [openRun(pool, 'run-1', 3), openRun(pool, 'run-2', 1)];
  const steps = await stepsOf(runs);
  for (const { sum } of steps) {
    assert.equal(sum.lossSum, expected.lossSum);
    for (const [name, g] of expected.grads)
      assert.deepEqual(sum.grads.get(name), g, `${name}: bits of the in-order sum`);
  }
  for (const w of workers) assert.ok(w.maxHeld <= 1, `worker held ${w.maxHeld} attempts at once`);
  assert.equal(
    workers.reduce((n, w) => n + w.computed.length, 0),
    2 * microBatches.length,
    'each micro-batch once',
  );
  for (const m of runs) m.close();
});

test('pool mesh: with --runs-per-worker 2 a worker holds one attempt of each run at once, never two of one', async () => {
  const pool = new PoolMesh({ manifest: tinyManifest('pool'), maxRunsPerWorker: 2 });
  const worker = new FakeWorker('solo', 1, 5).join(pool);
  // a worker that offers one at a time gets one at a time, whatever the pool allows
  const single = new FakeWorker('single', 1, 5, 1).join(pool);
  const runs = [openRun(pool, 'run-1', 1), openRun(pool, 'run-2', 1)];
  const steps = await stepsOf(runs);
  for (const { sum } of steps) for (const [name, g] of expected.grads) assert.deepEqual(sum.grads.get(name), g);
  assert.equal(worker.maxHeld, 2, 'two runs in one delivery');
  assert.equal(worker.maxHeldOfOneRun, 1);
  assert.equal(single.maxHeld, 1);
  for (const m of runs) m.close();
});

test('pool mesh: bad frames are refused with a code; a worker one run convicts leaves the pool, and that run refuses it after', async () => {
  const pool = new PoolMesh({ manifest: tinyManifest('pool'), log: () => {} });
  // a frame before hello, and a channel for a run that is not open
  const early = new FakeWorker('early');
  early.events = pool.attach(early);
  early.say({ type: 'heartbeat', sentAt: 1 });
  assert.deepEqual(early.rejects(), [ErrorCodes.STATE]);
  const stray = new FakeWorker('stray').join(pool);
  await new Promise((r) => setTimeout(r, 5));
  stray.channel('no-such-run', { type: 'heartbeat', sentAt: 1 });
  assert.deepEqual(stray.rejects(), [ErrorCodes.STATE]);
  stray.say({ type: 'params', paramVersion: 0, tensors: encodeFloats(new Float32Array(12), F32) } as Message);
  assert.deepEqual(stray.rejects(), [ErrorCodes.STATE, ErrorCodes.STATE], 'a coordinator message from a worker');

  // a liar, spot-checked by run-2: quarantined there, expelled from the pool, its name refused after
  const liar = new FakeWorker('liar', -1).join(pool);
  const honestWorker = new FakeWorker('honest').join(pool);
  const run = openRun(pool, 'run-2', 1, true);
  const { sum } = await run.compute(0, 0, microBatches);
  for (const [name, g] of expected.grads) assert.deepEqual(sum.grads.get(name), g, 'the lies never counted');
  assert.ok(!liar.open, 'the pool closed the liar');
  assert.ok(liar.rejects().includes(ErrorCodes.QUARANTINED));
  assert.ok(honestWorker.open && stray.open);
  // the name comes back (a name is the peer's choice: banning it pool-wide would let anyone ban an honest worker);
  // the run that convicted it refuses it at hello, and only that run
  const again = new FakeWorker('liar').join(pool);
  await new Promise((r) => setTimeout(r, 5));
  assert.ok(again.open, 'the pool takes the name back');
  const inRun = again.received.flatMap((m) =>
    m.type === 'channel' && m.runId === 'run-2' ? [decodeMessage(m.frame)] : [],
  );
  assert.ok(
    inRun.some((m) => m.type === 'reject' && m.code === ErrorCodes.QUARANTINED),
    'run-2 refuses it',
  );
  assert.ok(again.received.some((m) => m.type === 'run-close' && m.runId === 'run-2'));
  run.close();
});

test('pool mesh under 20,000 fuzzed frames (raw and inside a run channel): nothing thrown, the honest run exact', async () => {
  // the fuzzer's frames (test/helpers/fuzz-frames.ts): mutated, truncated, oversized, deep, text, wrong protocol…
  const seed = Number(process.env.LORAMESH_FUZZ_SEED ?? 9137);
  const pool = new PoolMesh({
    manifest: tinyManifest('pool'),
    log: () => {},
    // no flood limit at the pool: every frame is read (a run's own limits still close a flooding channel)
    security: { maxMessagesPerSecond: 1e9, maxRejects: 1e9 },
  });
  new FakeWorker('honest').join(pool);
  const run = openRun(pool, 'run-1', 1);
  const factory = new FrameFactory(
    new Rng(seed),
    SHAPES.map(([name, shape]) => ({ name, shape })),
    64 * 1024,
    [256 * 1024, 512 * 1024],
  );
  let thrown = 0;
  let peers = 0;
  let hostile: FakeWorker | null = null;
  const fresh = () => {
    peers++;
    // every other peer says hello first (and so gets run-1's channel), the others stay in the handshake
    const peer = new FakeWorker(`hostile-${peers}`);
    if (peers % 2 === 0) peer.join(pool);
    else peer.events = pool.attach(peer);
    return peer;
  };
  for (let i = 0; i < 20_000; i++) {
    if (!hostile?.open) hostile = fresh();
    const joined = peers % 2 === 0;
    const frame = factory.next(joined ? 'joined' : 'fresh');
    const bytes = typeof frame.data === 'string' ? new TextEncoder().encode(frame.data) : frame.data;
    try {
      // a third of a joined peer's frames go inside run-1's channel, to the run's own mesh
      if (joined && i % 3 === 0) hostile.say({ type: 'channel', runId: 'run-1', frame: bytes });
      else hostile.events.frame(bytes, frame.binary);
    } catch (err) {
      thrown++;
      if (thrown < 3) console.error(err);
    }
  }
  assert.equal(thrown, 0, 'no frame makes the pool throw');
  assert.ok(peers >= 2);
  const { sum } = await run.compute(0, 0, microBatches);
  for (const [name, g] of expected.grads) assert.deepEqual(sum.grads.get(name), g, 'the honest run is exact');
  run.close();
});

test('pool mesh: a run whose hello timed out on a worker is offered to it again; a full socket only pauses work', {
  timeout: 20_000,
}, async () => {
  const pool = new PoolMesh({ manifest: tinyManifest('pool'), log: () => {}, buffer: { soft: 1000, hard: 1e12 } });
  // it leaves the first run-open unanswered: the run's 50 ms handshake closes the channel, then the pool reopens it
  const slow = new FakeWorker('slow', 1, 1, 1, 1).join(pool);
  const run = openRun(pool, 'run-1', 1, false, 50);
  // the pool's timers are unref'd (its server holds a real process open): this test holds it meanwhile
  const alive = setInterval(() => {}, 100);
  const { sum } = await run.compute(0, 0, microBatches);
  for (const [name, g] of expected.grads) assert.deepEqual(sum.grads.get(name), g);
  assert.equal(slow.received.filter((m) => m.type === 'run-open').length, 2, 'offered again after the timeout');
  // unsent bytes over the soft limit: no new work (no channel closed), and work resumes once they drain
  slow.bufferedAmount = 5000;
  const step = run.compute(1, 0, microBatches);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(slow.computed.length, microBatches.length, 'no assignment while the socket is full');
  slow.bufferedAmount = 0;
  await step;
  clearInterval(alive);
  assert.equal(slow.computed.length, 2 * microBatches.length);
  assert.ok(slow.open);
  run.close();
});
