/**
 * The worker mesh as a GradientExecutor: hands micro-batches to connected workers, takes their
 * results, and puts a micro-batch back in the queue when its worker leaves or fails, so nothing is
 * lost. Idle workers pull the next micro-batch, so each gets work in proportion to its speed.
 * Every incoming frame is decoded and checked; a bad one is answered with a reject carrying its
 * error code and never reaches the aggregator.
 */
import { nanoid } from 'nanoid';
import type { WebSocket } from 'ws';
import type { AdapterState } from '../shared/lora/adapter.ts';
import { mixSeed } from '../shared/rng.ts';
import { ErrorCodes, LoraMeshError, type ErrorCode } from '../shared/errors.ts';
import { asBytes, decodeMessage, encodeMessage } from '../shared/protocol/codec.ts';
import {
  adapterLength, flattenTensors, PROTOCOL_VERSION, splitTensors, unpackFloats,
  type CoordinatorMessage, type Hello, type Result, type RunManifest,
} from '../shared/protocol/messages.ts';
import { decodeFloats, describeCodec, encodeFloats, F32, payloadBytes } from '../shared/protocol/wire-codec.ts';
import type { GradientResult } from '../shared/train/gradients.ts';
import { type MicroBatch, tokenCount } from '../shared/train/micro-batch.ts';
import { StepSchedule, type LedgerEntry, type ScheduleOptions } from './scheduler.ts';
import { InOrderSum } from '../shared/train/aggregate.ts';
import type { GradientExecutor, LocalJob, StepResults } from './trainer.ts';
import { ByteCounter, wsFrameBytes } from './traffic.ts';

/** The attempt a worker is computing; a worker holds at most one at a time. */
interface Holding {
  assignmentId: string;
  step: number;
  index: number;
  sentAt: number;
}

export interface WorkerInfo {
  id: string;
  name: string;
  backend: string;
  platform: string;
  /** device behind the backend, when the worker reports it */
  adapter: string;
  /** running on a slow fallback backend */
  slow: boolean;
  state: 'handshake' | 'loading' | 'ready';
  microBatchesDone: number;
  /** ledger counts: results used in a step, and results discarded because a copy won */
  used: number;
  discarded: number;
  tokensDone: number;
  /** tokens per second of compute, exponential moving average */
  throughput: number;
  /** bytes on the socket, WebSocket frame headers included */
  bytesIn: number;
  bytesOut: number;
  rejected: number;
  lastSeen: number;
}

interface WorkerConnection extends WorkerInfo {
  ws: WebSocket;
  holding: Holding | null;
  alive: boolean;
  /** rate limiter state */
  bucket: number;
  bucketAt: number;
  /** closed for an offence; its frames are ignored */
  quarantined: boolean;
}

export interface MeshOptions {
  manifest: RunManifest;
  log?: (line: string) => void;
  schedule?: ScheduleOptions;
  security?: Partial<SecurityLimits>;
  spotCheck?: SpotCheck;
}

/**
 * Untrusted volunteers: a secret, seeded fraction of micro-batches is recomputed by a trusted
 * party (the coordinator). A worker whose result disagrees beyond `tolerance` (relative L2 over all
 * gradients) is quarantined and every result it gave in the current step is recomputed.
 */
export interface SpotCheck {
  fraction: number;
  tolerance: number;
  secret: number;
  /** the trusted result of a micro-batch (sync) or a local job, from the parameters the workers hold */
  recompute: (work: WorkItem, adapter: AdapterState) => Promise<GradientResult>;
}

/** One unit of assignment: a micro-batch (synchronous mode) or a job of H micro-batches (local-steps mode). */
export type WorkItem = { kind: 'grad'; microBatch: MicroBatch } | { kind: 'local'; job: LocalJob };

const itemMicroBatches = (w: WorkItem) => (w.kind === 'grad' ? [w.microBatch] : w.job.microBatches);

/** Per-connection limits, on by default. */
export interface SecurityLimits {
  /** frames per second a connection may send (token bucket, burst = 2 s worth) */
  maxMessagesPerSecond: number;
  /** rejected frames before the connection is closed (quarantined) */
  maxRejects: number;
  /** a connection must finish hello within this many ms */
  handshakeTimeoutMs: number;
  /** no new work for a worker whose unsent output exceeds this many bytes; 4× this closes it */
  maxBufferedBytes: number;
}

export const DEFAULT_SECURITY: SecurityLimits = { maxMessagesPerSecond: 200, maxRejects: 50, handshakeTimeoutMs: 10_000, maxBufferedBytes: 64 * 1024 * 1024 };

interface StepInFlight {
  paramVersion: number;
  schedule: StepSchedule;
  items: WorkItem[];
  results: (GradientResult | undefined)[];
  /** gradient steps: the in-order sum, built as results arrive (local jobs are averaged by the trainer) */
  sum: InOrderSum | null;
  resolve: (results: GradientResult[]) => void;
}

export class MeshExecutor implements GradientExecutor {
  readonly workers = new Map<string, WorkerConnection>();
  /** every frame by direction and kind; per worker in WorkerInfo */
  readonly traffic = new ByteCounter();
  private paramsFrame: Uint8Array | null = null;
  /** full f32 parameters for workers that join after a delta (built on demand) */
  private keyframe: Uint8Array | null = null;
  private paramVersion = -1;
  /** what workers hold: the exact adapter with f32, the sum of decoded deltas with a lossy down codec */
  private shadow: Float32Array | null = null;
  private readonly adapterValues: number;
  /** names of workers that failed a spot check: refused if they come back (names are self-chosen, so this stops careless or restarted liars; per-volunteer tokens would make it binding) */
  private readonly banned = new Set<string>();
  private adapter: AdapterState = new Map();
  private inFlight: StepInFlight | null = null;
  /** who computed what in the last completed step */
  lastLedger: LedgerEntry[] = [];
  private readonly log: (line: string) => void;
  private readyWaiters: { count: number; resolve: () => void }[] = [];

  private readonly limits: SecurityLimits;

  constructor(private readonly options: MeshOptions) {
    this.log = options.log ?? (() => {});
    this.limits = { ...DEFAULT_SECURITY, ...options.security };
    this.adapterValues = adapterLength(options.manifest.adapter);
  }

  get bytesIn(): number {
    return this.traffic.inTotal;
  }

  get bytesOut(): number {
    return this.traffic.outTotal;
  }

  /** Resolves once at least `count` workers are ready to compute. */
  waitForWorkers(count: number): Promise<void> {
    if (this.readyCount() >= count) return Promise.resolve();
    return new Promise((resolve) => this.readyWaiters.push({ count, resolve }));
  }

  readyCount(): number {
    return [...this.workers.values()].filter((w) => w.state === 'ready').length;
  }

  /**
   * Sends a new parameter version. With f32 down it is the full vector (exact). With a lossy down
   * codec it is Q(exact − shadow), and the shadow (what workers hold) adds the decoded delta, so
   * what one message could not carry is in the next (error feedback; the exact copy stays here).
   */
  publish(paramVersion: number, adapter: AdapterState): void {
    const exact = flattenTensors(adapter, this.options.manifest.adapter);
    const down = this.options.manifest.wire.down;
    const previous = this.paramVersion;
    this.paramVersion = paramVersion;
    this.keyframe = null;
    if (down.name === 'f32' || !this.shadow) {
      this.shadow = exact;
      this.paramsFrame = this.encodeKeyframe();
      this.keyframe = this.paramsFrame;
    } else {
      const delta = new Float32Array(exact.length);
      for (let i = 0; i < delta.length; i++) delta[i] = exact[i] - this.shadow[i];
      const tensors = encodeFloats(delta, down);
      const decoded = decodeFloats(tensors);
      for (let i = 0; i < decoded.length; i++) this.shadow[i] += decoded[i];
      this.paramsFrame = encodeMessage({ type: 'params', paramVersion, deltaFrom: previous, tensors });
      this.paramsPayload = payloadBytes(tensors);
    }
    this.adapter = splitTensors(this.shadow.slice(), this.options.manifest.adapter);
    for (const w of this.workers.values()) if (w.state !== 'handshake') this.sendFrame(w, this.paramsFrame, 'params', this.paramsPayload);
  }

  private paramsPayload = 0;

  private encodeKeyframe(): Uint8Array {
    const tensors = encodeFloats(this.shadow!, F32);
    this.paramsPayload = payloadBytes(tensors);
    return encodeMessage({ type: 'params', paramVersion: this.paramVersion, tensors });
  }

  async compute(step: number, paramVersion: number, microBatches: MicroBatch[]): Promise<StepResults> {
    const slots: (GradientResult | undefined)[] = new Array(microBatches.length);
    const sum = new InOrderSum(slots);
    const results = await this.run(step, paramVersion, microBatches.map((microBatch) => ({ kind: 'grad', microBatch })), slots, sum);
    return { results, sum: sum.finish() };
  }

  computeLocal(step: number, paramVersion: number, jobs: LocalJob[]): Promise<GradientResult[]> {
    return this.run(step, paramVersion, jobs.map((job) => ({ kind: 'local', job })), new Array(jobs.length), null);
  }

  /** Hands out the items; `results` are their slots, filled as results are accepted (and added to `sum`). */
  private run(step: number, paramVersion: number, items: WorkItem[], results: (GradientResult | undefined)[], sum: InOrderSum | null): Promise<GradientResult[]> {
    return new Promise((resolve) => {
      const positions = items.map((item) => itemMicroBatches(item).reduce((n, mb) => n + mb.batch * mb.time, 0));
      this.inFlight = {
        paramVersion, items, resolve, results, sum,
        schedule: new StepSchedule(step, positions, (id, n) => this.expectedMs(id, n), this.options.schedule),
      };
      this.dispatch();
    });
  }

  /** Expected time for a worker to compute `positions` token positions, from its measured speed. */
  private expectedMs(workerId: string, positions: number): number | null {
    const w = this.workers.get(workerId);
    return w && w.throughput > 0 ? (1000 * positions) / w.throughput : null;
  }

  /** Re-runs the dispatcher while a step is in flight, so overdue attempts get copied to idle workers. */
  private readonly deadlineTimer = setInterval(() => {
    if (this.inFlight?.schedule.hasOverdue(Date.now())) this.dispatch();
  }, 100).unref();

  close(): void {
    clearInterval(this.deadlineTimer);
  }

  /** Admin action: disconnect a worker (its micro-batch is reassigned); false if unknown. */
  kick(workerId: string): boolean {
    const w = this.workers.get(workerId);
    if (!w) return false;
    this.closeWith(w, ErrorCodes.QUARANTINED, 'removed by the admin');
    return true;
  }

  /** Tells every worker the run is over. */
  finish(reason: string): void {
    for (const w of this.workers.values()) this.send(w, { type: 'done', reason });
  }

  attach(ws: WebSocket): void {
    const w: WorkerConnection = {
      id: nanoid(10), name: '', backend: '', platform: '', adapter: '', slow: false, state: 'handshake', microBatchesDone: 0, used: 0, discarded: 0, tokensDone: 0,
      throughput: 0, bytesIn: 0, bytesOut: 0, rejected: 0, lastSeen: Date.now(), ws, holding: null, alive: true,
      bucket: 2 * this.limits.maxMessagesPerSecond, bucketAt: Date.now(), quarantined: false,
    };
    this.workers.set(w.id, w);
    const handshake = setTimeout(() => {
      if (w.state === 'handshake') this.closeWith(w, ErrorCodes.LIMIT, `no hello within ${this.limits.handshakeTimeoutMs} ms`);
    }, this.limits.handshakeTimeoutMs);
    handshake.unref();
    ws.on('message', (data, isBinary) => this.onFrame(w, data as Buffer, isBinary));
    ws.on('pong', () => { w.alive = true; w.lastSeen = Date.now(); });
    ws.on('close', () => { clearTimeout(handshake); this.onClose(w); });
    ws.on('error', (err) => this.log(`worker ${w.id}: socket error ${err.message}`));
  }

  /** Pings every worker; one that did not answer the previous ping is dropped (its work requeued). */
  heartbeat(): void {
    for (const w of this.workers.values()) {
      if (!w.alive) {
        this.log(`worker ${w.id} missed a heartbeat; dropping it`);
        w.ws.terminate();
        continue;
      }
      w.alive = false;
      w.ws.ping();
    }
  }

  private onFrame(w: WorkerConnection, data: Buffer, isBinary: boolean): void {
    const wire = wsFrameBytes(data.length, true);
    w.bytesIn += wire;
    this.traffic.countIn(wire);
    w.lastSeen = Date.now();
    w.alive = true;
    if (w.quarantined) return;
    try {
      if (!this.takeToken(w)) throw new LoraMeshError(ErrorCodes.RATE, `more than ${this.limits.maxMessagesPerSecond} messages per second`);
      if (!isBinary) throw new LoraMeshError(ErrorCodes.DECODE, 'text frames are not part of the protocol');
      const message = decodeMessage(asBytes(data));
      switch (message.type) {
        case 'hello': return this.onHello(w, message);
        case 'ready': return this.onReady(w);
        case 'result': return this.onResult(w, message);
        case 'worker-error':
          if (w.state === 'handshake') throw new LoraMeshError(ErrorCodes.STATE, 'worker-error before hello');
          return this.onWorkerError(w, message.code, message.message, message.assignmentId);
        case 'heartbeat':
          if (w.state === 'handshake') throw new LoraMeshError(ErrorCodes.STATE, 'heartbeat before hello');
          return;
        default: throw new LoraMeshError(ErrorCodes.STATE, `a coordinator does not accept ${message.type} messages`);
      }
    } catch (err) {
      const code: ErrorCode = err instanceof LoraMeshError ? err.code : ErrorCodes.DECODE;
      w.rejected++;
      this.log(`worker ${w.id}: rejected frame (${(err as Error).message})`);
      this.send(w, { type: 'reject', code, message: (err as Error).message });
      if (w.rejected >= this.limits.maxRejects) this.closeWith(w, ErrorCodes.QUARANTINED, `${w.rejected} rejected frames`);
    }
  }

  /** Token bucket per connection: refills at maxMessagesPerSecond, holds 2 s worth. */
  private takeToken(w: WorkerConnection): boolean {
    const rate = this.limits.maxMessagesPerSecond;
    if (!Number.isFinite(rate)) return true;
    const now = Date.now();
    w.bucket = Math.min(2 * rate, w.bucket + ((now - w.bucketAt) / 1000) * rate);
    w.bucketAt = now;
    if (w.bucket < 1) return false;
    w.bucket -= 1;
    return true;
  }

  /** Tells the peer why (reject frame), closes with policy-violation 1008, and stops listening to it. */
  private closeWith(w: WorkerConnection, code: ErrorCode, why: string): void {
    if (w.quarantined) return;
    w.quarantined = true;
    this.log(`worker ${w.id}: closed (${code}: ${why})`);
    this.send(w, { type: 'reject', code, message: why });
    w.ws.close(1008, code);
    setTimeout(() => w.ws.terminate(), 1000).unref();
  }

  /** The join token was already checked in the HTTP upgrade (server.ts); hello carries capabilities. */
  private onHello(w: WorkerConnection, { protocol, name, backend, platform, adapter, slow, codecs }: Hello): void {
    if (w.state !== 'handshake') throw new LoraMeshError(ErrorCodes.STATE, 'hello sent twice');
    if (name !== undefined && this.banned.has(name)) {
      this.closeWith(w, ErrorCodes.QUARANTINED, `worker ${name} failed a spot check earlier in this run`);
      return;
    }
    if (protocol !== PROTOCOL_VERSION) {
      this.send(w, { type: 'reject', code: ErrorCodes.PROTOCOL_VERSION, message: `protocol ${protocol} is not supported; this coordinator speaks ${PROTOCOL_VERSION}` });
      w.ws.close(1002, ErrorCodes.PROTOCOL_VERSION);
      return;
    }
    const { up, down } = this.options.manifest.wire;
    const missing = [up, down].map((c) => c.name).filter((c) => c !== 'f32' && !(codecs ?? ['f32']).includes(c));
    if (missing.length > 0) {
      this.closeWith(w, ErrorCodes.CODEC, `this run sends ${describeCodec(up)} up and ${describeCodec(down)} down; the worker supports ${(codecs ?? ['f32']).join(', ')}`);
      return;
    }
    Object.assign(w, { name: name ?? w.id, backend, platform, adapter: adapter ?? '', slow: !!slow, state: 'loading' });
    this.log(`worker ${w.id} (${w.name}, ${platform}/${backend}${adapter ? ` on ${adapter}` : ''}) joined`);
    if (slow) this.log(`warning: worker ${w.id} runs on a slow fallback backend (${backend}${adapter ? `, ${adapter}` : ''})`);
    this.send(w, { type: 'welcome', workerId: w.id, manifest: this.options.manifest });
    if (this.shadow) this.sendFrame(w, (this.keyframe ??= this.encodeKeyframe()), 'params', 4 * this.adapterValues);
  }

  private onReady(w: WorkerConnection): void {
    if (w.state === 'handshake') throw new LoraMeshError(ErrorCodes.STATE, 'ready before hello');
    w.state = 'ready';
    this.log(`worker ${w.id} ready`);
    const ready = this.readyCount();
    this.readyWaiters = this.readyWaiters.filter((waiter) => (ready >= waiter.count ? (waiter.resolve(), false) : true));
    this.dispatch();
  }

  private onResult(w: WorkerConnection, r: Result): void {
    this.traffic.countPayloadIn(payloadBytes(r.grads)); // duplicates and refused results moved their bytes too
    const held = w.holding;
    if (!held || held.assignmentId !== r.assignmentId) throw new LoraMeshError(ErrorCodes.ASSIGNMENT, `assignment ${r.assignmentId} is not held by this worker`);
    const now = Date.now();
    w.holding = null;
    const step = this.inFlight;
    if (!step || held.step !== step.schedule.step) {
      // The step finished without this attempt (a copy won): the late result is simply not needed.
      this.dispatch();
      return;
    }
    let grads: Map<string, Float32Array>;
    try {
      if (r.paramVersion !== step.paramVersion) throw new LoraMeshError(ErrorCodes.STALE, `result for version ${r.paramVersion}, current is ${step.paramVersion}`);
      const expectedTokens = itemMicroBatches(step.items[held.index]).reduce((n, mb) => n + tokenCount(mb), 0);
      if (r.tokenCount !== expectedTokens) throw new LoraMeshError(ErrorCodes.FIELD, `result.tokenCount ${r.tokenCount} should be ${expectedTokens} for this ${step.items[held.index].kind === 'grad' ? 'micro-batch' : 'job'}`);
      grads = splitTensors(unpackFloats(r.grads, this.options.manifest.wire.up, this.adapterValues, 'result.grads'), this.options.manifest.adapter);
    } catch (err) {
      step.schedule.lose(held.assignmentId, 'rejected', now);
      this.dispatch();
      throw err;
    }
    const check = this.options.spotCheck;
    if (check && mixSeed(check.secret, held.step, held.index) / 2 ** 32 < check.fraction) {
      // Hold the worker's result until the trusted recomputation agrees.
      void this.spotCheck(w, held, r, grads, step, check);
      return;
    }
    this.accept(w, held, r, grads, step, now);
  }

  private async spotCheck(w: WorkerConnection, held: Holding, r: Result, grads: Map<string, Float32Array>, step: StepInFlight, check: SpotCheck): Promise<void> {
    const trusted = await check.recompute(step.items[held.index], this.adapter);
    if (this.inFlight !== step) return; // the step ended meanwhile (a copy won)
    let diff = 0;
    let norm = 0;
    for (const [name, g] of trusted.grads) {
      const theirs = grads.get(name)!;
      for (let i = 0; i < g.length; i++) {
        diff += (g[i] - theirs[i]) ** 2;
        norm += g[i] ** 2;
      }
    }
    const relative = Math.sqrt(diff) / Math.max(1e-12, Math.sqrt(norm));
    const now = Date.now();
    if (relative <= check.tolerance) {
      this.accept(w, held, r, grads, step, now);
      return;
    }
    this.log(`worker ${w.id} failed a spot check (step ${held.step}, micro-batch ${held.index}: relative L2 ${relative.toExponential(2)}); quarantining it`);
    step.schedule.lose(held.assignmentId, 'rejected', now);
    for (const a of step.schedule.attempts.values()) {
      if (a.workerId === w.id && a.outcome === 'used') {
        step.schedule.revoke(a.assignmentId, now);
        step.results[a.index] = undefined;
        step.sum?.retract(a.index);
      }
    }
    this.send(w, { type: 'reject', code: ErrorCodes.SPOT_CHECK, message: `result of micro-batch ${held.index} disagrees with a trusted recomputation` });
    this.banned.add(w.name);
    this.closeWith(w, ErrorCodes.QUARANTINED, 'failed a spot check');
    this.dispatch();
  }

  private accept(w: WorkerConnection, held: Holding, r: Result, grads: Map<string, Float32Array>, step: StepInFlight, now: number): void {
    const positions = itemMicroBatches(step.items[held.index]).reduce((n, mb) => n + mb.batch * mb.time, 0);
    const tps = positions / Math.max(1e-3, (now - held.sentAt) / 1000); // measured here: includes the network
    w.throughput = w.throughput === 0 ? tps : 0.7 * w.throughput + 0.3 * tps;
    w.microBatchesDone++;
    w.tokensDone += r.tokenCount;
    const outcome = step.schedule.complete(held.assignmentId, now);
    if (outcome === 'duplicate') w.discarded++;
    if (outcome === 'used') {
      w.used++;
      step.results[held.index] = { lossSum: r.lossSum, tokenCount: r.tokenCount, grads };
      step.sum?.advance();
    }
    if (step.schedule.remaining === 0) {
      this.inFlight = null;
      this.lastLedger = step.schedule.finish(now);
      step.resolve(step.results as GradientResult[]);
    }
    this.dispatch();
  }

  private onWorkerError(w: WorkerConnection, code: string, message: string, assignmentId?: string): void {
    // A peer's text goes into the log and dashboard: one line, bounded, no control characters.
    const clean = (text: string, max: number) => text.replace(/[\u0000-\u001f\u007f]+/g, ' ').slice(0, max);
    this.log(`worker ${w.id} reported ${clean(code, 64)}: ${clean(message, 300)}`);
    if (w.holding && (assignmentId === undefined || assignmentId === w.holding.assignmentId)) this.release(w, 'lost');
    this.dispatch();
  }

  private onClose(w: WorkerConnection): void {
    this.workers.delete(w.id);
    if (w.holding) {
      this.log(`worker ${w.id} left holding micro-batch ${w.holding.index} of step ${w.holding.step}; reassigning it`);
      this.release(w, 'lost');
    } else {
      this.log(`worker ${w.id} left`);
    }
    this.dispatch();
  }

  /** The worker will not deliver its attempt: the schedule requeues the micro-batch if needed. */
  private release(w: WorkerConnection, outcome: 'lost' | 'rejected'): void {
    const held = w.holding!;
    w.holding = null;
    if (this.inFlight && this.inFlight.schedule.step === held.step) this.inFlight.schedule.lose(held.assignmentId, outcome, Date.now());
  }

  private dispatch(): void {
    const step = this.inFlight;
    if (!step) return;
    const now = Date.now();
    for (const w of this.workers.values()) {
      if (w.state !== 'ready' || w.holding || this.paramVersion !== step.paramVersion || w.quarantined) continue;
      if (w.ws.bufferedAmount > this.limits.maxBufferedBytes) continue; // backpressure: it has not taken what we sent
      const a = step.schedule.next(w.id, now);
      if (!a) continue;
      if (a.reason === 'straggler') this.log(`micro-batch ${a.index} of step ${step.schedule.step} is slow; also giving it to worker ${w.id}`);
      w.holding = { assignmentId: a.assignmentId, step: step.schedule.step, index: a.index, sentAt: now };
      const item = step.items[a.index];
      const common = { assignmentId: a.assignmentId, paramVersion: step.paramVersion, step: step.schedule.step, index: a.index };
      this.send(w, item.kind === 'grad'
        ? { type: 'assign', ...common, microBatch: item.microBatch }
        : { type: 'assign-local', ...common, lr: item.job.lr, microBatches: item.job.microBatches }, 'assign');
    }
  }

  private send(w: WorkerConnection, message: CoordinatorMessage, kind: 'assign' | 'other' = 'other'): void {
    this.sendFrame(w, encodeMessage(message), kind);
  }

  private sendFrame(w: WorkerConnection, frame: Uint8Array, kind: 'params' | 'assign' | 'other', payload = 0): void {
    if (w.ws.readyState !== w.ws.OPEN) return;
    if (w.ws.bufferedAmount > 4 * this.limits.maxBufferedBytes) {
      this.log(`worker ${w.id}: ${w.ws.bufferedAmount} bytes unsent; dropping it`);
      w.ws.terminate();
      return;
    }
    const wire = wsFrameBytes(frame.length, false);
    w.bytesOut += wire;
    this.traffic.countOut(wire, kind, payload);
    w.ws.send(frame);
  }

  info(): WorkerInfo[] {
    return [...this.workers.values()].map(({ ws: _ws, holding: _h, alive: _alive, bucket: _b, bucketAt: _ba, quarantined: _q, ...info }) => info);
  }
}
