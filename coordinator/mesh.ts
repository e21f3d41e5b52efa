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
import { decodeMessage, encodeMessage } from '../shared/protocol/codec.ts';
import { checkTensors, PROTOCOL_VERSION, type CoordinatorMessage, type Hello, type Result, type RunManifest } from '../shared/protocol/messages.ts';
import type { GradientResult } from '../shared/train/gradients.ts';
import { type MicroBatch, tokenCount } from '../shared/train/micro-batch.ts';
import { StepSchedule, type LedgerEntry, type ScheduleOptions } from './scheduler.ts';
import type { GradientExecutor } from './trainer.ts';

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
  recompute: (mb: MicroBatch, adapter: AdapterState) => Promise<GradientResult>;
}

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
  microBatches: MicroBatch[];
  results: (GradientResult | undefined)[];
  resolve: (results: GradientResult[]) => void;
}

export class MeshExecutor implements GradientExecutor {
  readonly workers = new Map<string, WorkerConnection>();
  bytesIn = 0;
  bytesOut = 0;
  private paramsFrame: Uint8Array | null = null;
  private paramVersion = -1;
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
  }

  /** Resolves once at least `count` workers are ready to compute. */
  waitForWorkers(count: number): Promise<void> {
    if (this.readyCount() >= count) return Promise.resolve();
    return new Promise((resolve) => this.readyWaiters.push({ count, resolve }));
  }

  readyCount(): number {
    return [...this.workers.values()].filter((w) => w.state === 'ready').length;
  }

  publish(paramVersion: number, adapter: AdapterState): void {
    this.paramVersion = paramVersion;
    this.adapter = adapter;
    this.paramsFrame = encodeMessage({ type: 'params', paramVersion, tensors: Object.fromEntries(adapter) });
    for (const w of this.workers.values()) if (w.state !== 'handshake') this.sendFrame(w, this.paramsFrame);
  }

  compute(step: number, paramVersion: number, microBatches: MicroBatch[]): Promise<GradientResult[]> {
    return new Promise((resolve) => {
      const positions = microBatches.map((mb) => mb.batch * mb.time);
      this.inFlight = {
        paramVersion, microBatches, resolve, results: new Array(microBatches.length),
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
    w.bytesIn += data.length;
    this.bytesIn += data.length;
    w.lastSeen = Date.now();
    w.alive = true;
    if (w.quarantined) return;
    try {
      if (!this.takeToken(w)) throw new LoraMeshError(ErrorCodes.RATE, `more than ${this.limits.maxMessagesPerSecond} messages per second`);
      if (!isBinary) throw new LoraMeshError(ErrorCodes.DECODE, 'text frames are not part of the protocol');
      const message = decodeMessage(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
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
  private onHello(w: WorkerConnection, { protocol, name, backend, platform, adapter, slow }: Hello): void {
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
    Object.assign(w, { name: name ?? w.id, backend, platform, adapter: adapter ?? '', slow: !!slow, state: 'loading' });
    this.log(`worker ${w.id} (${w.name}, ${platform}/${backend}${adapter ? ` on ${adapter}` : ''}) joined`);
    if (slow) this.log(`warning: worker ${w.id} runs on a slow fallback backend (${backend}${adapter ? `, ${adapter}` : ''})`);
    this.send(w, { type: 'welcome', workerId: w.id, manifest: this.options.manifest });
    if (this.paramsFrame) this.sendFrame(w, this.paramsFrame);
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
    try {
      if (r.paramVersion !== step.paramVersion) throw new LoraMeshError(ErrorCodes.STALE, `result for version ${r.paramVersion}, current is ${step.paramVersion}`);
      const mb = step.microBatches[held.index];
      const expectedTokens = tokenCount(mb);
      if (r.tokenCount !== expectedTokens) throw new LoraMeshError(ErrorCodes.FIELD, `result.tokenCount ${r.tokenCount} should be ${expectedTokens} for this micro-batch`);
      checkTensors(r.grads, this.options.manifest.adapter, 'result.grads');
    } catch (err) {
      step.schedule.lose(held.assignmentId, 'rejected', now);
      this.dispatch();
      throw err;
    }
    const check = this.options.spotCheck;
    if (check && mixSeed(check.secret, held.step, held.index) / 2 ** 32 < check.fraction) {
      // Hold the worker's result until the trusted recomputation agrees.
      void this.spotCheck(w, held, r, step, check);
      return;
    }
    this.accept(w, held, r, step, now);
  }

  private async spotCheck(w: WorkerConnection, held: Holding, r: Result, step: StepInFlight, check: SpotCheck): Promise<void> {
    const trusted = await check.recompute(step.microBatches[held.index], this.adapter);
    if (this.inFlight !== step) return; // the step ended meanwhile (a copy won)
    let diff = 0;
    let norm = 0;
    for (const [name, g] of trusted.grads) {
      const theirs = r.grads[name];
      for (let i = 0; i < g.length; i++) {
        diff += (g[i] - theirs[i]) ** 2;
        norm += g[i] ** 2;
      }
    }
    const relative = Math.sqrt(diff) / Math.max(1e-12, Math.sqrt(norm));
    const now = Date.now();
    if (relative <= check.tolerance) {
      this.accept(w, held, r, step, now);
      return;
    }
    this.log(`worker ${w.id} failed a spot check (step ${held.step}, micro-batch ${held.index}: relative L2 ${relative.toExponential(2)}); quarantining it`);
    step.schedule.lose(held.assignmentId, 'rejected', now);
    for (const a of step.schedule.attempts.values()) {
      if (a.workerId === w.id && a.outcome === 'used') {
        step.schedule.revoke(a.assignmentId, now);
        step.results[a.index] = undefined;
      }
    }
    this.send(w, { type: 'reject', code: ErrorCodes.SPOT_CHECK, message: `result of micro-batch ${held.index} disagrees with a trusted recomputation` });
    this.banned.add(w.name);
    this.closeWith(w, ErrorCodes.QUARANTINED, 'failed a spot check');
    this.dispatch();
  }

  private accept(w: WorkerConnection, held: Holding, r: Result, step: StepInFlight, now: number): void {
    const positions = step.microBatches[held.index].batch * step.microBatches[held.index].time;
    const tps = positions / Math.max(1e-3, (now - held.sentAt) / 1000); // measured here: includes the network
    w.throughput = w.throughput === 0 ? tps : 0.7 * w.throughput + 0.3 * tps;
    w.microBatchesDone++;
    w.tokensDone += r.tokenCount;
    const outcome = step.schedule.complete(held.assignmentId, now);
    if (outcome === 'duplicate') w.discarded++;
    if (outcome === 'used') {
      w.used++;
      step.results[held.index] = { lossSum: r.lossSum, tokenCount: r.tokenCount, grads: new Map(Object.entries(r.grads)) };
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
      this.send(w, { type: 'assign', assignmentId: a.assignmentId, paramVersion: step.paramVersion, step: step.schedule.step, index: a.index, microBatch: step.microBatches[a.index] });
    }
  }

  private send(w: WorkerConnection, message: CoordinatorMessage): void {
    this.sendFrame(w, encodeMessage(message));
  }

  private sendFrame(w: WorkerConnection, frame: Uint8Array): void {
    if (w.ws.readyState !== w.ws.OPEN) return;
    if (w.ws.bufferedAmount > 4 * this.limits.maxBufferedBytes) {
      this.log(`worker ${w.id}: ${w.ws.bufferedAmount} bytes unsent; dropping it`);
      w.ws.terminate();
      return;
    }
    w.bytesOut += frame.length;
    this.bytesOut += frame.length;
    w.ws.send(frame);
  }

  info(): WorkerInfo[] {
    return [...this.workers.values()].map(({ ws: _ws, holding: _h, alive: _alive, bucket: _b, bucketAt: _ba, quarantined: _q, ...info }) => info);
  }
}
