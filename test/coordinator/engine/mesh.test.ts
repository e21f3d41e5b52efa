// The mesh without sockets: in-memory peers speak the protocol to a MeshExecutor. A step's results
// come back summed in micro-batch order (the same bits as aggregateInOrder); a result that could
// overflow the sum is refused; worker-errors for nothing held count toward quarantine; the outlier
// screen recomputes a huge result, convicts its sender and hands its micro-batches to others; an
// aborted step rejects.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeMessage, encodeMessage } from '../../../shared/protocol/codec.ts';
import { PROTOCOL_VERSION, RELAY_PROTOCOL, type Message } from '../../../shared/protocol/messages.ts';
import { encodeFloats, F32 } from '../../../shared/protocol/wire-codec.ts';
import { aggregateInOrder } from '../../../shared/train/aggregate.ts';
import type { GradientResult } from '../../../shared/train/gradients.ts';
import { tokenCount, type MicroBatch } from '../../../shared/train/micro-batch.ts';
import { MeshExecutor, type ResultChecks, type WorkItem } from '../../../coordinator/engine/mesh.ts';
import type { Peer, PeerEvents } from '../../../coordinator/engine/peer.ts';
import { honest, microBatches, SHAPES, tinyManifest, VALUES } from '../../helpers/tiny-mesh.ts';

const manifest = tinyManifest('mesh-test');
const adapter = new Map(SHAPES.map(([name, [r, c]]) => [name, new Float32Array(r * c).fill(0.5)]));

class FakePeer implements Peer {
  bufferedAmount = 0;
  open = true;
  /** upgraded with the relay token (server.ts) */
  relay = false;
  received: Message[] = [];
  closedWith: number | null = null;
  events!: PeerEvents;
  /** answers an assignment of micro-batch `index` with these values (null: does not answer) */
  constructor(
    private readonly answer: (index: number) => Float32Array | null,
    private readonly lossSum = 1,
  ) {}
  send(frame: Uint8Array): void {
    const m = decodeMessage(frame);
    this.received.push(m);
    if (m.type === 'assign') {
      const values = this.answer(m.index);
      if (values) {
        queueMicrotask(() =>
          this.say({
            type: 'result',
            assignmentId: m.assignmentId,
            paramVersion: m.paramVersion,
            tokenCount: tokenCount(m.microBatch),
            lossSum: this.lossSum,
            computeMs: 1,
            grads: encodeFloats(values, F32),
          }),
        );
      }
    }
  }
  close(code: number): void {
    this.closedWith = code;
    this.open = false;
    queueMicrotask(() => this.events.close());
  }
  terminate(): void {
    if (this.open) this.close(1006);
  }
  ping(): void {}
  say(m: Message): void {
    if (this.open) this.events.frame(encodeMessage(m), true);
  }
  join(mesh: MeshExecutor, name: string): this {
    this.events = mesh.attach(this);
    this.say({ type: 'hello', protocol: PROTOCOL_VERSION, backend: 'wasm', platform: 'node', name });
    this.say({ type: 'ready', paramVersion: -1 });
    return this;
  }
  rejects(): string[] {
    return this.received.flatMap((m) => (m.type === 'reject' ? [m.code] : []));
  }
}

function mesh(checks?: Partial<ResultChecks>, recomputed: number[] = []): MeshExecutor {
  const full: ResultChecks | undefined = checks && {
    spotCheck: 0,
    probation: 0,
    outlierFactor: 10,
    tolerance: 1e-6,
    secret: 1,
    recompute: async (work: WorkItem): Promise<GradientResult> => {
      const index = microBatches.indexOf((work as { microBatch: MicroBatch }).microBatch);
      recomputed.push(index);
      const g = honest(index);
      return {
        lossSum: 1,
        tokenCount: 3,
        grads: new Map([
          ['m.lora_A', g.slice(0, 6)],
          ['m.lora_B', g.slice(6)],
        ]),
      };
    },
    ...checks,
  };
  const m = new MeshExecutor({ manifest, checks: full, security: { handshakeTimeoutMs: 60_000, maxRejects: 5 } });
  m.publish(0, adapter);
  return m;
}

/** The honest results summed in the canonical order (with `block`: the reduction block's). */
const expectedSum = (block?: number) =>
  aggregateInOrder(
    microBatches.map((mb, i) => ({
      lossSum: 1,
      tokenCount: tokenCount(mb),
      grads: new Map([
        ['m.lora_A', honest(i).slice(0, 6)],
        ['m.lora_B', honest(i).slice(6)],
      ]),
    })),
    block,
  );

test('two honest peers: welcome, params, assignments; the step sums in micro-batch order, bit for bit', async () => {
  const m = mesh();
  const peers = [new FakePeer(honest).join(m, 'a'), new FakePeer(honest).join(m, 'b')];
  const { results, sum } = await m.compute(0, 0, microBatches);
  assert.equal(results.length, 6);
  assert.deepEqual([...sum.grads.get('m.lora_A')!], [...expectedSum().grads.get('m.lora_A')!]);
  assert.deepEqual([...sum.grads.get('m.lora_B')!], [...expectedSum().grads.get('m.lora_B')!]);
  for (const p of peers)
    assert.deepEqual(
      p.received.slice(0, 2).map((x) => x.type),
      ['welcome', 'params'],
    );
  assert.equal(
    m.lastLedger.every((e) => e.usedWorker !== null),
    true,
  );
  m.close();
});

test(
  'a result whose values could overflow the float32 sum is refused (LM_ERR_NON_FINITE) ' +
    'and its micro-batch recomputed elsewhere',
  async () => {
    const m = mesh();
    const liar = new FakePeer(() => new Float32Array(VALUES).fill(3e38)).join(m, 'liar');
    new FakePeer(honest).join(m, 'honest');
    const { sum } = await m.compute(0, 0, microBatches);
    assert.ok(liar.rejects().includes('LM_ERR_NON_FINITE'));
    assert.deepEqual([...sum.grads.get('m.lora_A')!], [...expectedSum().grads.get('m.lora_A')!]);
    assert.ok((m.rejections.get('LM_ERR_NON_FINITE') ?? 0) >= 1);
    m.close();
  },
);

test(
  'worker-errors naming no held assignment are rejected frames: ' + 'maxRejects of them quarantine the peer (1008)',
  async () => {
    const m = mesh();
    const p = new FakePeer(() => null).join(m, 'flood');
    for (let i = 0; i < 5; i++)
      p.say({ type: 'worker-error', code: 'LM_ERR_STALE', message: 'x', assignmentId: `nope-${i}` });
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(p.rejects(), [
      'LM_ERR_ASSIGNMENT',
      'LM_ERR_ASSIGNMENT',
      'LM_ERR_ASSIGNMENT',
      'LM_ERR_ASSIGNMENT',
      'LM_ERR_ASSIGNMENT',
      'LM_ERR_QUARANTINED',
    ]);
    assert.equal(p.closedWith, 1008);
    m.close();
  },
);

test(
  'outlier screen: a huge result is recomputed, refuted (LM_ERR_OUTLIER), ' +
    'its sender quarantined and its results taken back',
  async () => {
    const recomputed: number[] = [];
    const m = mesh({}, recomputed);
    const liar = new FakePeer((i) => honest(i).map((x) => x * 1e6)).join(m, 'liar');
    new FakePeer(honest).join(m, 'a');
    new FakePeer(honest).join(m, 'b');
    const { sum } = await m.compute(0, 0, microBatches);
    assert.deepEqual(
      [...sum.grads.get('m.lora_A')!],
      [...expectedSum().grads.get('m.lora_A')!],
      'the sum is the honest one',
    );
    assert.ok(
      liar.rejects().includes('LM_ERR_OUTLIER') && liar.rejects().at(-1) === 'LM_ERR_QUARANTINED',
      liar.rejects().join(),
    );
    assert.equal(recomputed.length, 1, "one recomputation convicts; the liar's other results go with it");
    assert.equal(m.quarantinedCount, 1);
    m.close();
  },
);

test('abort() rejects the step in flight', async () => {
  const m = mesh();
  new FakePeer(() => null).join(m, 'silent');
  const step = m.compute(0, 0, microBatches);
  m.abort(new Error('stopped'));
  await assert.rejects(step, /stopped/);
  m.close();
});

test(
  'a lie in lossSum alone: 1e308 is refused outright; ' + 'a plausible wrong loss fails its probation check',
  async () => {
    const m = mesh({ probation: 1, outlierFactor: 0 });
    const overflow = new FakePeer(honest, 1e308).join(m, 'overflow');
    const wrongLoss = new FakePeer(honest, 50).join(m, 'wrong-loss');
    new FakePeer(honest).join(m, 'honest');
    const { sum } = await m.compute(0, 0, microBatches);
    assert.ok(overflow.rejects().includes('LM_ERR_NON_FINITE'), overflow.rejects().join());
    assert.ok(wrongLoss.rejects().includes('LM_ERR_SPOT_CHECK'), wrongLoss.rejects().join());
    assert.equal(sum.lossSum, 6, 'every used result carries the honest loss');
    m.close();
  },
);

test('a worker whose stated memory cannot hold the run is refused with LM_ERR_MEMORY; one that fits only recomputing is told to; the rest join as they are', async () => {
  const asked: [string, number][] = [];
  const m = new MeshExecutor({
    manifest,
    memoryCheck: (backend, limit) => {
      asked.push([backend, limit]);
      if (limit < 1000)
        return { fits: false, why: `the run needs 0.00 GB; this ${backend} worker can hold ${limit} bytes` };
      return { fits: true, recompute: limit < 2000 };
    },
  });
  const join = (name: string, memoryLimit?: number) => {
    const p = new FakePeer(() => null);
    p.events = m.attach(p);
    p.say({ type: 'hello', protocol: PROTOCOL_VERSION, backend: 'wasm', platform: 'node', name, memoryLimit });
    return p;
  };
  const small = join('small', 999);
  const middle = join('middle', 1500);
  const big = join('big', 4e9);
  const silent = join('silent');
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(small.rejects(), ['LM_ERR_MEMORY']);
  const reject = small.received.find((x) => x.type === 'reject');
  assert.match(reject?.type === 'reject' ? reject.message : '', /this wasm worker can hold 999 bytes/);
  assert.equal(small.closedWith, 1008);
  const welcomeOf = (p: FakePeer) => p.received.find((x) => x.type === 'welcome');
  for (const p of [middle, big, silent]) {
    assert.deepEqual(p.rejects(), []);
    assert.ok(welcomeOf(p));
  }
  const recompute = (p: FakePeer) => {
    const w = welcomeOf(p);
    return w?.type === 'welcome' ? w.recompute === true : undefined;
  };
  assert.deepEqual([recompute(middle), recompute(big), recompute(silent)], [true, false, false]);
  assert.deepEqual(asked, [
    ['wasm', 999],
    ['wasm', 1500],
    ['wasm', 4e9],
  ]);
  m.close();
});

test('a run with recompute asks it of every worker in the welcome', async () => {
  const m = new MeshExecutor({ manifest, recompute: true });
  const p = new FakePeer(() => null);
  p.events = m.attach(p);
  p.say({ type: 'hello', protocol: PROTOCOL_VERSION, backend: 'wasm', platform: 'node', name: 'w' });
  await new Promise((r) => setImmediate(r));
  const w = p.received.find((x) => x.type === 'welcome');
  assert.equal(w?.type === 'welcome' && w.recompute, true);
  m.close();
});

test('a compact-base run refuses a worker that cannot load its format with LM_ERR_CODEC; one that can joins', async () => {
  const compact = tinyManifest('compact');
  compact.model.baseFormat = { format: 'nf4', blockSize: 64, doubleQuant: false };
  const m = new MeshExecutor({ manifest: compact });
  const join = (baseFormats?: string[]) => {
    const p = new FakePeer(() => null);
    p.events = m.attach(p);
    p.say({ type: 'hello', protocol: PROTOCOL_VERSION, backend: 'wasm', platform: 'node', baseFormats } as Message);
    return p;
  };
  const old = join();
  const int8Only = join(['int8']);
  const able = join(['f32', 'int8', 'nf4']);
  await new Promise((r) => setImmediate(r));
  for (const p of [old, int8Only]) {
    assert.deepEqual(p.rejects(), ['LM_ERR_CODEC']);
    assert.equal(p.closedWith, 1008);
  }
  const reject = old.received.find((x) => x.type === 'reject');
  assert.match(
    reject?.type === 'reject' ? reject.message : '',
    /base is nf4\/64; the worker loads float32 checkpoints only/,
  );
  assert.deepEqual(able.rejects(), []);
  const welcome = able.received.find((x) => x.type === 'welcome');
  assert.deepEqual(welcome?.type === 'welcome' ? welcome.manifest.model.baseFormat : null, compact.model.baseFormat);
  m.close();
});

test('a relaxed-fma run refuses a worker whose hello lacks it with LM_ERR_ARITHMETIC; one that offers it joins', async () => {
  const relaxed = { ...tinyManifest('relaxed'), arithmetic: 'relaxed-fma' as const };
  const m = new MeshExecutor({ manifest: relaxed });
  const join = (arithmetic?: string[]) => {
    const p = new FakePeer(() => null);
    p.events = m.attach(p);
    p.say({ type: 'hello', protocol: PROTOCOL_VERSION, backend: 'wasm', platform: 'node', arithmetic } as Message);
    return p;
  };
  const old = join(); // a hello from before arithmetic variants: simd128 only
  const plain = join(['simd128']);
  const able = join(['simd128', 'relaxed-fma']);
  await new Promise((r) => setImmediate(r));
  for (const p of [old, plain]) {
    assert.deepEqual(p.rejects(), ['LM_ERR_ARITHMETIC']);
    assert.equal(p.closedWith, 1008);
    const reject = p.received.find((x) => x.type === 'reject');
    assert.match(
      reject?.type === 'reject' ? reject.message : '',
      /computes with arithmetic relaxed-fma; the worker supports simd128$/,
    );
  }
  assert.deepEqual(able.rejects(), []);
  const welcome = able.received.find((x) => x.type === 'welcome');
  assert.equal(welcome?.type === 'welcome' ? welcome.manifest.arithmetic : null, 'relaxed-fma');
  m.close();
});

test('a simd128 run (or a manifest without arithmetic) admits old hellos and relaxed-fma-capable ones', async () => {
  for (const arithmetic of [undefined, 'simd128'] as const) {
    const m = new MeshExecutor({ manifest: { ...tinyManifest('plain'), arithmetic } });
    const peers = [undefined, ['simd128'], ['simd128', 'relaxed-fma']].map((offered) => {
      const p = new FakePeer(() => null);
      p.events = m.attach(p);
      p.say({
        type: 'hello',
        protocol: PROTOCOL_VERSION,
        backend: 'wasm',
        platform: 'node',
        arithmetic: offered,
      } as Message);
      return p;
    });
    await new Promise((r) => setImmediate(r));
    for (const p of peers) {
      assert.deepEqual(p.rejects(), []);
      assert.ok(p.received.some((x) => x.type === 'welcome'));
    }
    m.close();
  }
});

test("a relay's workers are bounded for the parent's sum: a result too large for it is refused at the relay", async () => {
  // norm ≈ 1e32·√VALUES: far under the bound of a 2-result sum (8.5e37), over that of a million-result one (1.7e32)
  const big = () => new Float32Array(VALUES).fill(1e32);
  for (const boundSlots of [undefined, 1_000_000]) {
    const m = mesh();
    const liar = new FakePeer(big).join(m, 'liar');
    const honestPeer = new FakePeer(honest).join(m, 'honest');
    const run = m.computeBlocks(0, 0, microBatches.slice(0, 2), 2, boundSlots);
    if (boundSlots === undefined) {
      const { blocks } = await run;
      assert.deepEqual(liar.rejects(), [], 'the relay-local bound alone lets it through');
      assert.ok(Math.abs(blocks[0].grads.get('m.lora_A')![0]) >= 1e31, 'and it is summed');
    } else {
      // the liar's micro-batches go to the honest worker
      const { blocks } = await run;
      assert.ok(liar.rejects().includes('LM_ERR_NON_FINITE'));
      assert.ok(Math.abs(blocks[0].grads.get('m.lora_A')![0]) < 10, 'only honest results are summed');
      assert.equal(honestPeer.rejects().length, 0);
    }
    m.close();
  }
});

/** A relay's hello, saying `relayProtocol` (undefined: none, as before relay protocol 2). */
const relayHello = (relayProtocol?: number): Message => ({
  type: 'hello',
  protocol: PROTOCOL_VERSION,
  backend: 'relay',
  platform: 'node',
  relay: true,
  ...(relayProtocol === undefined ? {} : { relayProtocol }),
});

test('a relay (upgraded with the relay token) is not rate-limited: 1000 frames at once pass; a worker is refused past its burst', async () => {
  // a relay answers in one frame per block sum and per result sent up whole: hundreds at once at a step's start
  const m = new MeshExecutor({ manifest: tinyManifest('rate'), security: { maxMessagesPerSecond: 10 } });
  const say = (p: FakePeer, relay: boolean) => {
    p.events = m.attach(p);
    p.say(relay ? relayHello(RELAY_PROTOCOL) : ({ ...relayHello(), relay: false } as Message));
    for (let i = 0; i < 1000; i++) p.say({ type: 'heartbeat', sentAt: i });
  };
  const relay = Object.assign(new FakePeer(() => null), { relay: true });
  say(relay, true);
  const worker = new FakePeer(() => null);
  say(worker, false);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(relay.rejects(), []);
  assert.equal(relay.closedWith, null);
  // burst 2 s worth (20 frames), then LM_ERR_RATE until the reject limit quarantines it
  assert.ok(worker.rejects().includes('LM_ERR_RATE'), worker.rejects().join());
  assert.equal(worker.closedWith, 1008);
  m.close();
});

test("a relay of another relay protocol is refused at its hello, naming both numbers; the welcome names the parent's", async () => {
  const m = new MeshExecutor({ manifest: tinyManifest('relay-protocol') });
  const hello = (relayProtocol?: number) => {
    const p = Object.assign(new FakePeer(() => null), { relay: true });
    p.events = m.attach(p);
    p.say(relayHello(relayProtocol));
    return p;
  };
  const old = hello();
  const newer = hello(RELAY_PROTOCOL + 1);
  const same = hello(RELAY_PROTOCOL);
  await new Promise((r) => setImmediate(r));
  for (const [p, said] of [
    [old, 'none (a relay from before relay protocol numbers)'],
    [newer, String(RELAY_PROTOCOL + 1)],
  ] as const) {
    const reject = p.received.find((x) => x.type === 'reject');
    assert.equal(reject?.type === 'reject' && reject.code, 'LM_ERR_PROTOCOL_VERSION');
    assert.match(
      reject?.type === 'reject' ? reject.message : '',
      new RegExp(
        `relay protocol ${said.replace(/[()]/g, '\\$&')} is not supported; this coordinator speaks relay protocol ${RELAY_PROTOCOL}`,
      ),
    );
    assert.notEqual(p.closedWith, null);
    assert.ok(!p.received.some((x) => x.type === 'welcome'));
  }
  const welcome = same.received.find((x) => x.type === 'welcome');
  assert.equal(welcome?.type === 'welcome' && welcome.relayProtocol, RELAY_PROTOCOL);
  assert.equal(same.closedWith, null);
  m.close();
});

/**
 * A relay as the parent sees it: it answers each assign-blocks with a block-sum per block (its micro-batches'
 * honest results added in order) and the block-result, at once (`auto`) or when released.
 */
class FakeRelay extends FakePeer {
  override relay = true;
  /** how many of the next assignments it answers at once (the rest it holds until released) */
  auto = 0;
  private readonly held: Extract<Message, { type: 'assign-blocks' }>[] = [];
  constructor() {
    super(() => null);
  }
  override send(frame: Uint8Array): void {
    super.send(frame);
    const m = this.received[this.received.length - 1];
    if (m.type !== 'assign-blocks') return;
    this.held.push(m);
    if (this.auto > 0) {
      this.auto--;
      queueMicrotask(() => this.release());
    }
  }
  /** its worker id at the parent (from the welcome) */
  id(): string {
    const welcome = this.received.find((x) => x.type === 'welcome');
    return welcome?.type === 'welcome' ? welcome.workerId : '';
  }
  joinAsRelay(mesh: MeshExecutor): this {
    this.events = mesh.attach(this);
    this.say(relayHello(RELAY_PROTOCOL));
    this.say({ type: 'ready', paramVersion: -1 });
    this.say({ type: 'capacity', microBatches: 2 });
    return this;
  }
  /** answers every assignment held so far */
  release(): void {
    for (const a of this.held.splice(0)) {
      const items = a.blocks.flatMap((b) =>
        b.microBatches.map((_, j) => {
          const index = b.block * a.blockSize + j;
          return { index, worker: 'w', name: 'w', lossSum: 1, tokenCount: tokenCount(microBatches[index]), norm: 0.1 };
        }),
      );
      for (const b of a.blocks) {
        const mine = items.filter((it) => Math.floor(it.index / a.blockSize) === b.block);
        const sum = new Float32Array(VALUES);
        for (const it of mine) {
          const g = honest(it.index);
          for (let k = 0; k < VALUES; k++) sum[k] += g[k];
        }
        this.say({
          type: 'block-sum',
          assignmentId: a.assignmentId,
          block: b.block,
          lossSum: mine.reduce((s, it) => s + it.lossSum, 0),
          tokenCount: mine.reduce((s, it) => s + it.tokenCount, 0),
          grads: encodeFloats(sum, F32),
        });
      }
      this.say({ type: 'block-result', assignmentId: a.assignmentId, paramVersion: a.paramVersion, items });
    }
  }
}

const until = async (what: string, ok: () => boolean) => {
  for (let t = 0; !ok(); t += 10) {
    if (t > 5000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

test("a relay's late block is copied whole to an idle relay; when the original answers first, the copy's answer is a duplicate", async () => {
  const m = new MeshExecutor({
    manifest,
    reductionBlock: 2,
    // unmeasured relays: a group's deadline is (1 + 1) × 20 ms
    schedule: { deadlineFactor: 1, deadlineSlackMs: 0, unknownExpectedMs: 20 },
  });
  m.publish(0, adapter);
  const [a, b, c] = [new FakeRelay(), new FakeRelay(), new FakeRelay()].map((r) => r.joinAsRelay(m));
  b.auto = 1; // answers block 1 at once, then is idle while a's block 0 and c's block 2 go late; holds its copy
  const step = m.compute(0, 0, microBatches);
  const blocksOf = (r: FakeRelay) =>
    r.received.flatMap((x) => (x.type === 'assign-blocks' ? [x.blocks.map((bl) => bl.block)] : []));
  await until('b to take a copy', () => blocksOf(b).length === 2);
  assert.deepEqual(blocksOf(b), [[1], [0]]); // the most overdue first: a's block 0 (then block order)
  a.release(); // the original answers first: it counts
  await until('a to take a copy of block 2', () => blocksOf(a).length === 2);
  assert.deepEqual(blocksOf(a), [[0], [2]]); // a, idle again, copies c's late block and holds it
  b.release(); // the copy's answer of block 0 comes second: a duplicate
  c.release(); // the step ends with c's own block 2
  const { sum } = await step;
  const reference = expectedSum(2);
  for (const name of ['m.lora_A', 'm.lora_B'])
    assert.deepEqual([...sum.grads.get(name)!], [...reference.grads.get(name)!], name);
  const outcomes = (index: number) =>
    m.lastLedger[index].attempts.map(
      (x) => `${x.workerId === a.id() ? 'a' : x.workerId === b.id() ? 'b' : 'c'} ${x.reason} ${x.outcome}`,
    );
  assert.deepEqual(outcomes(0), ['a first used', 'b straggler duplicate']);
  assert.deepEqual(outcomes(2), ['b first used']);
  assert.deepEqual(outcomes(4), ['c first used', 'a straggler cancelled']);
  const discarded = Object.fromEntries(m.info().map((w) => [w.id, w.discarded]));
  assert.deepEqual([discarded[a.id()], discarded[b.id()], discarded[c.id()]], [0, 2, 0]);
  m.close();
});
