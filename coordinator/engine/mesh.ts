/**
 * The worker mesh as a GradientExecutor: hands micro-batches to connected workers, takes their
 * results, and puts a micro-batch back in the queue when its worker leaves or fails, so nothing is
 * lost. Idle workers pull the next micro-batch, so each gets work in proportion to its speed.
 * Every incoming frame is decoded and checked; a bad one is answered with a reject carrying its
 * error code and never reaches the aggregator.
 */
import { nanoid } from 'nanoid';
import { adapterParameterCount, type AdapterState } from '../../shared/lora/adapter.ts';
import { mixSeed } from '../../shared/rng.ts';
import { closeCodeFor, ErrorCodes, LoraMeshError, type ErrorCode } from '../../shared/errors.ts';
import { asBytes, decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import {
  PROTOCOL_VERSION,
  splitTensors,
  unpackFloats,
  type CoordinatorMessage,
  type Hello,
  type Result,
  type RunManifest,
} from '../../shared/protocol/messages.ts';
import { describeCodec, payloadBytes } from '../../shared/protocol/wire-codec.ts';
import type { GradientResult } from '../../shared/train/gradients.ts';
import { type MicroBatch, tokenCount } from '../../shared/train/micro-batch.ts';
import { StepSchedule, type LedgerEntry, type ScheduleOptions } from './scheduler.ts';
import { InOrderSum } from '../../shared/train/aggregate.ts';
import type { GradientExecutor, LocalJob, StepResults } from './trainer.ts';
import { ByteCounter, wsFrameBytes } from './traffic.ts';
import { ParamsPublisher } from './params-publisher.ts';
import { TokenBucket } from './token-bucket.ts';
import type { Peer, PeerEvents } from './peer.ts';
import { l2Norm, NormHistory, outliers, overflowBound, relativeL2, type ScreenedResult } from './defence.ts';
import { cleanPeerText } from '../../shared/protocol/peer-text.ts';

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
  ws: Peer;
  holding: Holding | null;
  alive: boolean;
  /** rate limiter state */
  bucket: TokenBucket;
  /** closed for an offence; its frames are ignored */
  quarantined: boolean;
  /** offences that are not rejected frames (worker-errors for held work); each used result takes one away */
  strikes: number;
  /** results of this connection confirmed by a trusted recomputation, and those being recomputed now */
  checksPassed: number;
  checksPending: number;
}

export interface MeshOptions {
  manifest: RunManifest;
  log?: (line: string) => void;
  schedule?: ScheduleOptions;
  security?: Partial<SecurityLimits>;
  checks?: ResultChecks;
}

/**
 * Untrusted volunteers (defence.ts): a secret, seeded fraction of results, and every result whose
 * norm is an outlier in its step, is recomputed by a trusted party (the coordinator). A worker whose
 * result disagrees beyond `tolerance` (relative L2 over all gradients) is quarantined and every
 * result it gave in the current step is recomputed.
 */
export interface ResultChecks {
  /** share of results spot-checked (0: none) */
  spotCheck: number;
  /** the first this-many results of every connection are spot-checked too */
  probation: number;
  /** norm > outlierFactor × the step's median norm: recomputed before it counts (0: off) */
  outlierFactor: number;
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
  /** no new work for a worker whose unsent output exceeds this many bytes; 2× this closes it (default: 2 parameter frames, at least 8 MiB) */
  maxBufferedBytes?: number;
}

/** Upper bound of one token's loss in a result (a cross-entropy in nats; ln of any vocabulary is far below). */
const MAX_TOKEN_LOSS = 1e4;

export const DEFAULT_SECURITY: SecurityLimits = {
  maxMessagesPerSecond: 200,
  maxRejects: 50,
  handshakeTimeoutMs: 10_000,
};

interface StepInFlight {
  paramVersion: number;
  schedule: StepSchedule;
  items: WorkItem[];
  results: (GradientResult | undefined)[];
  /** gradient steps: the in-order sum, built as results arrive (local jobs are averaged by the trainer) */
  sum: InOrderSum | null;
  /** per slot: who sent the used result, its norm, whether a trusted recomputation confirmed it */
  screened: (ScreenedResult | undefined)[];
  /** outlier recomputations still running; the step ends only when none are */
  verifying: number;
  resolve: (results: GradientResult[]) => void;
  reject: (err: Error) => void;
}

export class MeshExecutor implements GradientExecutor {
  readonly workers = new Map<string, WorkerConnection>();
  /** every frame by direction and kind; per worker in WorkerInfo */
  readonly traffic = new ByteCounter();
  /** the parameter versions workers hold, and the frames that bring them there */
  private readonly params: ParamsPublisher;
  private readonly adapterValues: number;
  /** names of workers that failed a spot check: refused if they come back (names are self-chosen, so this stops careless or restarted liars; per-volunteer tokens would make it binding) */
  private readonly banned = new Set<string>();
  /** what workers hold, by name: what trusted recomputations use */
  private adapter: AdapterState = new Map();
  private inFlight: StepInFlight | null = null;
  /** who computed what in the last completed step */
  lastLedger: LedgerEntry[] = [];
  private readonly log: (line: string) => void;
  private readyWaiters: { count: number; resolve: () => void }[] = [];

  private readonly limits: Required<SecurityLimits>;
  /** refused frames and results by error code, over the whole run (the final summary) */
  readonly rejections = new Map<string, number>();
  /** workers closed for offences (failed checks, floods, admin kicks) */
  quarantinedCount = 0;
  /** recent trusted result norms, the outlier screen's memory across steps */
  private readonly norms = new NormHistory();

  constructor(private readonly options: MeshOptions) {
    this.log = options.log ?? (() => {});
    this.adapterValues = adapterParameterCount(options.manifest.adapter);
    this.params = new ParamsPublisher(options.manifest);
    const paramsFrame = 4 * this.adapterValues + 4096;
    this.limits = {
      maxBufferedBytes: Math.max(8 << 20, 2 * paramsFrame),
      ...DEFAULT_SECURITY,
      ...options.security,
    } as Required<SecurityLimits>;
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

  /** Makes a new parameter version current on every worker that has joined (params-publisher.ts). */
  publish(paramVersion: number, adapter: AdapterState): void {
    const { frame, payload } = this.params.publish(paramVersion, adapter);
    this.adapter = this.params.held();
    for (const w of this.workers.values()) if (w.state !== 'handshake') this.sendFrame(w, frame, 'params', payload);
  }

  async compute(step: number, paramVersion: number, microBatches: MicroBatch[]): Promise<StepResults> {
    const slots: (GradientResult | undefined)[] = new Array(microBatches.length);
    const sum = new InOrderSum(slots);
    const results = await this.run(
      step,
      paramVersion,
      microBatches.map((microBatch) => ({ kind: 'grad', microBatch })),
      slots,
      sum,
    );
    return { results, sum: sum.finish() };
  }

  computeLocal(step: number, paramVersion: number, jobs: LocalJob[]): Promise<GradientResult[]> {
    return this.run(
      step,
      paramVersion,
      jobs.map((job) => ({ kind: 'local', job })),
      new Array(jobs.length),
      null,
    );
  }

  /** Hands out the items; `results` are their slots, filled as results are accepted (and added to `sum`). */
  private run(
    step: number,
    paramVersion: number,
    items: WorkItem[],
    results: (GradientResult | undefined)[],
    sum: InOrderSum | null,
  ): Promise<GradientResult[]> {
    return new Promise((resolve, reject) => {
      const positions = items.map((item) => itemMicroBatches(item).reduce((n, mb) => n + mb.batch * mb.time, 0));
      this.inFlight = {
        paramVersion,
        items,
        resolve,
        reject,
        results,
        sum,
        screened: new Array(items.length),
        verifying: 0,
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
    const now = Date.now();
    if (this.inFlight?.schedule.hasOverdue(now)) this.dispatch();
    // A step with no worker left to compute it says so (every minute) instead of waiting in silence.
    if (this.inFlight && this.readyCount() === 0 && now - this.lastIdleNote > 60_000) {
      if (this.lastIdleNote > 0)
        this.log(`step ${this.inFlight.schedule.step} waits: no worker is connected (loramesh worker … joins)`);
      this.lastIdleNote = now;
    } else if (!this.inFlight || this.readyCount() > 0) this.lastIdleNote = 0;
  }, 100).unref();
  private lastIdleNote = 0;

  close(): void {
    clearInterval(this.deadlineTimer);
  }

  /** Gives up on the step in flight (SIGINT/SIGTERM, admin stop): its compute() rejects with `reason`. */
  abort(reason: Error): void {
    const step = this.inFlight;
    if (!step) return;
    // Holdings stay: results still on their way are then late, not foreign (no reject, no count).
    this.inFlight = null;
    step.reject(reason);
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

  /** A new connection (not yet said hello); returns the handlers of its events. */
  attach(ws: Peer): PeerEvents {
    const w: WorkerConnection = {
      id: nanoid(10),
      name: '',
      backend: '',
      platform: '',
      adapter: '',
      slow: false,
      state: 'handshake',
      microBatchesDone: 0,
      used: 0,
      discarded: 0,
      tokensDone: 0,
      throughput: 0,
      bytesIn: 0,
      bytesOut: 0,
      rejected: 0,
      lastSeen: Date.now(),
      ws,
      holding: null,
      alive: true,
      bucket: new TokenBucket(this.limits.maxMessagesPerSecond),
      quarantined: false,
      strikes: 0,
      checksPassed: 0,
      checksPending: 0,
    };
    this.workers.set(w.id, w);
    const handshake = setTimeout(() => {
      if (w.state === 'handshake')
        this.closeWith(w, ErrorCodes.LIMIT, `no hello within ${this.limits.handshakeTimeoutMs} ms`);
    }, this.limits.handshakeTimeoutMs);
    handshake.unref();
    return {
      frame: (data, isBinary) => this.onFrame(w, data, isBinary),
      pong: () => {
        w.alive = true;
        w.lastSeen = Date.now();
      },
      close: () => {
        clearTimeout(handshake);
        this.onClose(w);
      },
      error: (err) => this.log(`worker ${w.id}: socket error ${cleanPeerText(err.message, 200)}`),
    };
  }

  private lastHeartbeat = 0;

  /**
   * Pings every worker; one that did not answer the previous ping is dropped (its work requeued).
   * If this process itself was busy past the interval (a long trusted recomputation or eval), the
   * pongs may be waiting unread: that round drops no one and starts afresh.
   */
  heartbeat(intervalMs = Infinity): void {
    const now = Date.now();
    const lagged = this.lastHeartbeat > 0 && now - this.lastHeartbeat > 1.5 * intervalMs;
    this.lastHeartbeat = now;
    for (const w of this.workers.values()) {
      if (lagged) w.alive = true;
      if (!w.alive) {
        this.log(`worker ${w.id} missed a heartbeat; dropping it`);
        w.ws.terminate();
        continue;
      }
      w.alive = false;
      w.ws.ping();
    }
  }

  private onFrame(w: WorkerConnection, data: Uint8Array, isBinary: boolean): void {
    const wire = wsFrameBytes(data.length, true);
    w.bytesIn += wire;
    this.traffic.countIn(wire);
    w.lastSeen = Date.now();
    w.alive = true;
    if (w.quarantined) return;
    try {
      if (!w.bucket.take())
        throw new LoraMeshError(ErrorCodes.RATE, `more than ${this.limits.maxMessagesPerSecond} messages per second`);
      if (!isBinary) throw new LoraMeshError(ErrorCodes.DECODE, 'text frames are not part of the protocol');
      const message = decodeMessage(asBytes(data));
      switch (message.type) {
        case 'hello':
          return this.onHello(w, message);
        case 'ready':
          return this.onReady(w);
        case 'result':
          return this.onResult(w, message);
        case 'worker-error':
          if (w.state === 'handshake') throw new LoraMeshError(ErrorCodes.STATE, 'worker-error before hello');
          return this.onWorkerError(w, message.code, message.message, message.assignmentId);
        case 'heartbeat':
          if (w.state === 'handshake') throw new LoraMeshError(ErrorCodes.STATE, 'heartbeat before hello');
          return;
        default:
          throw new LoraMeshError(ErrorCodes.STATE, `a coordinator does not accept ${message.type} messages`);
      }
    } catch (err) {
      const code: ErrorCode = err instanceof LoraMeshError ? err.code : ErrorCodes.DECODE;
      // Messages may quote what the peer sent: cleaned before they reach the log.
      const why = cleanPeerText((err as Error).message, 300);
      w.rejected++;
      this.countRejection(code);
      this.log(`worker ${w.id}: rejected frame (${why})`);
      this.send(w, { type: 'reject', code, message: why });
      if (w.rejected + w.strikes >= this.limits.maxRejects)
        this.closeWith(w, ErrorCodes.QUARANTINED, `${w.rejected} rejected frames, ${w.strikes} failed assignments`);
    }
  }

  private countRejection(code: string): void {
    this.rejections.set(code, (this.rejections.get(code) ?? 0) + 1);
  }

  /** Tells the peer why (reject frame), closes with closeCodeFor(code) (1008, policy violation), and stops listening to it. */
  private closeWith(w: WorkerConnection, code: ErrorCode, why: string): void {
    if (w.quarantined) return;
    w.quarantined = true;
    if (code === ErrorCodes.QUARANTINED) this.quarantinedCount++;
    this.log(`worker ${w.id}: closed (${code}: ${why})`);
    this.send(w, { type: 'reject', code, message: why });
    w.ws.close(closeCodeFor(code), code);
    setTimeout(() => w.ws.terminate(), 1000).unref();
  }

  /** The join token was already checked in the HTTP upgrade (server.ts); hello carries capabilities. */
  private onHello(w: WorkerConnection, hello: Hello): void {
    if (w.state !== 'handshake') throw new LoraMeshError(ErrorCodes.STATE, 'hello sent twice');
    // Every string here is the peer's choice: cleaned once, before a log line or the dashboard sees it.
    const { protocol, slow, codecs } = hello;
    const name = hello.name === undefined ? undefined : cleanPeerText(hello.name, 64);
    const [backend, platform, adapter] = [
      cleanPeerText(hello.backend, 32),
      cleanPeerText(hello.platform, 16),
      cleanPeerText(hello.adapter ?? '', 120),
    ];
    if (name !== undefined && this.banned.has(name)) {
      this.closeWith(w, ErrorCodes.QUARANTINED, `worker ${name} failed a spot check earlier in this run`);
      return;
    }
    if (protocol !== PROTOCOL_VERSION) {
      this.send(w, {
        type: 'reject',
        code: ErrorCodes.PROTOCOL_VERSION,
        message: `protocol ${protocol} is not supported; this coordinator speaks ${PROTOCOL_VERSION}`,
      });
      w.ws.close(closeCodeFor(ErrorCodes.PROTOCOL_VERSION), ErrorCodes.PROTOCOL_VERSION);
      return;
    }
    const { up, down } = this.options.manifest.wire;
    const missing = [up, down].map((c) => c.name).filter((c) => c !== 'f32' && !(codecs ?? ['f32']).includes(c));
    if (missing.length > 0) {
      this.closeWith(
        w,
        ErrorCodes.CODEC,
        `this run sends ${describeCodec(up)} up and ${describeCodec(down)} down; the worker supports ${cleanPeerText((codecs ?? ['f32']).join(', '), 80)}`,
      );
      return;
    }
    Object.assign(w, { name: name ?? w.id, backend, platform, adapter: adapter ?? '', slow: !!slow, state: 'loading' });
    this.log(`worker ${w.id} (${w.name}, ${platform}/${backend}${adapter ? ` on ${adapter}` : ''}) joined`);
    if (slow)
      this.log(`warning: worker ${w.id} runs on a slow fallback backend (${backend}${adapter ? `, ${adapter}` : ''})`);
    this.send(w, { type: 'welcome', workerId: w.id, manifest: this.options.manifest });
    const keyframe = this.params.keyframe();
    if (keyframe) this.sendFrame(w, keyframe.frame, 'params', keyframe.payload);
  }

  private onReady(w: WorkerConnection): void {
    if (w.state === 'handshake') throw new LoraMeshError(ErrorCodes.STATE, 'ready before hello');
    if (w.state === 'ready') throw new LoraMeshError(ErrorCodes.STATE, 'ready sent twice');
    w.state = 'ready';
    this.log(`worker ${w.id} ready`);
    const ready = this.readyCount();
    this.readyWaiters = this.readyWaiters.filter((waiter) =>
      ready >= waiter.count ? (waiter.resolve(), false) : true,
    );
    this.dispatch();
  }

  private onResult(w: WorkerConnection, r: Result): void {
    this.traffic.countPayloadIn(payloadBytes(r.grads)); // duplicates and refused results moved their bytes too
    const held = w.holding;
    if (!held || held.assignmentId !== r.assignmentId)
      throw new LoraMeshError(ErrorCodes.ASSIGNMENT, `assignment ${r.assignmentId} is not held by this worker`);
    const now = Date.now();
    w.holding = null;
    const step = this.inFlight;
    if (!step || held.step !== step.schedule.step) {
      // The step finished without this attempt (a copy won): the late result is simply not needed.
      this.dispatch();
      return;
    }
    let grads: Map<string, Float32Array>;
    let norm: number;
    try {
      if (r.paramVersion !== step.paramVersion)
        throw new LoraMeshError(
          ErrorCodes.STALE,
          `result for version ${r.paramVersion}, current is ${step.paramVersion}`,
        );
      const expectedTokens = itemMicroBatches(step.items[held.index]).reduce((n, mb) => n + tokenCount(mb), 0);
      if (r.tokenCount !== expectedTokens)
        throw new LoraMeshError(
          ErrorCodes.FIELD,
          `result.tokenCount ${r.tokenCount} should be ${expectedTokens} for this ${step.items[held.index].kind === 'grad' ? 'micro-batch' : 'job'}`,
        );
      // A token's loss is a cross-entropy: ≥ 0, and far below 1e4 for any model worth training.
      if (!(r.lossSum >= 0 && r.lossSum <= MAX_TOKEN_LOSS * Math.max(1, r.tokenCount))) {
        throw new LoraMeshError(
          ErrorCodes.NON_FINITE,
          `result.lossSum ${r.lossSum} is not a sum of ${r.tokenCount} token losses (each in [0, ${MAX_TOKEN_LOSS}])`,
        );
      }
      const flat = unpackFloats(r.grads, this.options.manifest.wire.up, this.adapterValues, 'result.grads');
      // Finite values can still overflow the float32 sum (3e38 + 3e38 = Infinity): refused here.
      norm = l2Norm(flat);
      const bound = overflowBound(step.items.length);
      if (!(norm <= bound))
        throw new LoraMeshError(
          ErrorCodes.NON_FINITE,
          `result norm ${norm.toExponential(2)} could overflow the step's float32 sum (at most ${bound.toExponential(2)})`,
        );
      grads = splitTensors(flat, this.options.manifest.adapter);
    } catch (err) {
      step.schedule.lose(held.assignmentId, 'rejected', now);
      this.dispatch();
      throw err;
    }
    const checks = this.options.checks;
    const onProbation = checks && w.checksPassed + w.checksPending < checks.probation;
    if (
      checks &&
      (onProbation ||
        (checks.spotCheck > 0 && mixSeed(checks.secret, held.step, held.index) / 2 ** 32 < checks.spotCheck))
    ) {
      // Hold the worker's result until the trusted recomputation agrees; meanwhile it may take more work.
      void this.spotCheck(w, held, r, grads, norm, step, checks).catch((err) => this.failStep(step, err));
      this.dispatch();
      return;
    }
    this.accept(w, held, r, grads, norm, false, step, now);
  }

  /** The trusted recomputation of a slot's work, and how far the result is from it (relative L2 of the gradients, relative loss). */
  private async disagreement(
    step: StepInFlight,
    index: number,
    grads: Map<string, Float32Array>,
    lossSum: number,
    checks: ResultChecks,
  ): Promise<number> {
    const trusted = await checks.recompute(step.items[index], this.adapter);
    const loss = Math.abs(trusted.lossSum - lossSum) / Math.max(1, Math.abs(trusted.lossSum));
    return Math.max(relativeL2(trusted.grads, grads), loss);
  }

  /** A trusted recomputation itself failed (weights unloadable, out of memory): the step fails with it. */
  private failStep(step: StepInFlight, err: unknown): void {
    if (this.inFlight !== step) return;
    this.log(`a trusted recomputation failed: ${(err as Error).message}`);
    this.abort(err instanceof Error ? err : new Error(String(err)));
  }

  private async spotCheck(
    w: WorkerConnection,
    held: Holding,
    r: Result,
    grads: Map<string, Float32Array>,
    norm: number,
    step: StepInFlight,
    checks: ResultChecks,
  ): Promise<void> {
    w.checksPending++;
    let relative: number;
    try {
      relative = await this.disagreement(step, held.index, grads, r.lossSum, checks);
    } finally {
      w.checksPending--;
    }
    if (this.inFlight !== step) {
      // The step ended meanwhile (a copy won): nothing to take back, but a proven liar still goes.
      if (relative > checks.tolerance) {
        this.countRejection(ErrorCodes.SPOT_CHECK);
        this.banned.add(w.name);
        this.closeWith(w, ErrorCodes.QUARANTINED, 'failed a spot check');
      }
      return;
    }
    const now = Date.now();
    if (relative <= checks.tolerance) {
      w.checksPassed++;
      this.norms.trusted(norm);
      this.accept(w, held, r, grads, norm, true, step, now);
      return;
    }
    step.schedule.lose(held.assignmentId, 'rejected', now);
    this.convict(
      w,
      step,
      ErrorCodes.SPOT_CHECK,
      `result of micro-batch ${held.index} of step ${held.step} disagrees with a trusted recomputation (relative L2 ${relative.toExponential(2)})`,
    );
  }

  /**
   * A worker's result was refuted by a trusted recomputation: count it, quarantine the worker (and
   * its name), take back every result it gave in this step and hand those micro-batches out again.
   */
  private convict(w: WorkerConnection, step: StepInFlight, code: ErrorCode, why: string): void {
    this.countRejection(code);
    const check = code === ErrorCodes.SPOT_CHECK ? 'a spot check' : 'an outlier check';
    this.log(`worker ${w.id} (${w.name}) failed ${check} (${code}): ${why}; quarantining it`);
    this.takeBack(step, w.id);
    if (w.holding?.step === step.schedule.step) this.release(w, 'lost');
    this.send(w, { type: 'reject', code, message: why });
    this.banned.add(w.name);
    this.closeWith(w, ErrorCodes.QUARANTINED, `failed ${check}`);
    this.dispatch();
  }

  private accept(
    w: WorkerConnection,
    held: Holding,
    r: Result,
    grads: Map<string, Float32Array>,
    norm: number,
    verified: boolean,
    step: StepInFlight,
    now: number,
  ): void {
    const positions = itemMicroBatches(step.items[held.index]).reduce((n, mb) => n + mb.batch * mb.time, 0);
    const tps = positions / Math.max(1e-3, (now - held.sentAt) / 1000); // measured here: includes the network
    w.throughput = w.throughput === 0 ? tps : 0.7 * w.throughput + 0.3 * tps;
    w.microBatchesDone++;
    w.tokensDone += r.tokenCount;
    const outcome = step.schedule.complete(held.assignmentId, now);
    if (outcome === 'duplicate') w.discarded++;
    if (outcome === 'used') {
      w.used++;
      w.strikes = Math.max(0, w.strikes - 1);
      step.results[held.index] = { lossSum: r.lossSum, tokenCount: r.tokenCount, grads };
      step.screened[held.index] = { index: held.index, workerId: w.id, norm, verified };
      step.sum?.advance();
    }
    this.closeStepIfComplete(step);
    this.dispatch();
  }

  /**
   * Once every slot holds a result: the outlier screen (defence.ts). Flagged results are recomputed
   * by the trusted party; the step ends when none is flagged or being recomputed.
   */
  private closeStepIfComplete(step: StepInFlight): void {
    if (this.inFlight !== step || step.schedule.remaining > 0 || step.verifying > 0) return;
    const checks = this.options.checks;
    const screened = step.screened.filter((s): s is ScreenedResult => !!s);
    const flagged = checks ? outliers(screened, checks.outlierFactor, this.norms) : [];
    if (flagged.length === 0) {
      this.norms.step(screened);
      this.inFlight = null;
      this.lastLedger = step.schedule.finish(Date.now());
      step.resolve(step.results as GradientResult[]);
      return;
    }
    // One at a time, largest first: a conviction takes back the liar's other results with it.
    const largest = flagged.reduce((a, b) => (step.screened[b]!.norm > step.screened[a]!.norm ? b : a));
    void this.screenOutlier(step, largest, checks!).catch((err) => this.failStep(step, err));
  }

  private async screenOutlier(step: StepInFlight, index: number, checks: ResultChecks): Promise<void> {
    const screened = step.screened[index]!;
    const grads = step.results[index]!.grads;
    step.verifying++;
    this.log(
      `step ${step.schedule.step}: micro-batch ${index} from worker ${screened.workerId} has norm ${screened.norm.toExponential(2)}, over ${checks.outlierFactor}× the step's median; recomputing it`,
    );
    let relative: number;
    try {
      relative = await this.disagreement(step, index, grads, step.results[index]!.lossSum, checks);
    } finally {
      step.verifying--;
    }
    if (this.inFlight !== step) return;
    if (step.screened[index] !== screened) {
      // taken back meanwhile (its worker was convicted elsewhere): nothing left to decide
    } else if (relative <= checks.tolerance) {
      screened.verified = true;
      this.norms.trusted(screened.norm);
    } else {
      const w = this.workers.get(screened.workerId);
      const why = `result of micro-batch ${index} of step ${step.schedule.step} has norm ${screened.norm.toExponential(2)} and disagrees with a trusted recomputation (relative L2 ${relative.toExponential(2)})`;
      if (w) this.convict(w, step, ErrorCodes.OUTLIER, why);
      else this.revokeAbsent(step, screened.workerId, why);
    }
    this.closeStepIfComplete(step);
  }

  /** A refuted worker that already left: its results of the step are taken back all the same. */
  private revokeAbsent(step: StepInFlight, workerId: string, why: string): void {
    this.countRejection(ErrorCodes.OUTLIER);
    this.log(`worker ${workerId} (gone): ${ErrorCodes.OUTLIER}: ${why}; its results are recomputed`);
    this.takeBack(step, workerId);
    this.dispatch();
  }

  /** Every result `workerId` gave in the step is revoked: out of the sum, its micro-batch handed out again. */
  private takeBack(step: StepInFlight, workerId: string): void {
    const now = Date.now();
    for (const a of step.schedule.attempts.values()) {
      if (a.workerId !== workerId || a.outcome !== 'used') continue;
      step.schedule.revoke(a.assignmentId, now);
      step.results[a.index] = undefined;
      step.screened[a.index] = undefined;
      step.sum?.retract(a.index);
    }
  }

  /**
   * A worker says it cannot deliver. Naming the assignment it holds releases it (a strike: too
   * many and it is quarantined); naming anything else is a rejected frame, so a flood of them
   * quarantines the sender instead of filling the ledger with lost attempts.
   */
  private onWorkerError(w: WorkerConnection, code: string, message: string, assignmentId?: string): void {
    if (!w.holding || assignmentId !== w.holding.assignmentId) {
      throw new LoraMeshError(
        ErrorCodes.ASSIGNMENT,
        `worker-error for ${assignmentId === undefined ? 'no assignment' : `assignment ${cleanPeerText(assignmentId, 40)}`}, which this worker does not hold`,
      );
    }
    this.log(`worker ${w.id} reported ${cleanPeerText(code, 64)}: ${cleanPeerText(message, 300)}`);
    this.release(w, 'lost');
    w.strikes++;
    if (w.rejected + w.strikes >= this.limits.maxRejects)
      this.closeWith(w, ErrorCodes.QUARANTINED, `${w.strikes} failed assignments`);
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
    if (this.inFlight && this.inFlight.schedule.step === held.step)
      this.inFlight.schedule.lose(held.assignmentId, outcome, Date.now());
  }

  private dispatch(): void {
    const step = this.inFlight;
    if (!step) return;
    const now = Date.now();
    for (const w of this.workers.values()) {
      if (w.state !== 'ready' || w.holding || this.params.version !== step.paramVersion || w.quarantined) continue;
      if (w.ws.bufferedAmount > this.limits.maxBufferedBytes) continue; // backpressure: it has not taken what we sent
      const a = step.schedule.next(w.id, now);
      if (!a) continue;
      if (a.reason === 'straggler')
        this.log(`micro-batch ${a.index} of step ${step.schedule.step} is slow; also giving it to worker ${w.id}`);
      w.holding = { assignmentId: a.assignmentId, step: step.schedule.step, index: a.index, sentAt: now };
      const item = step.items[a.index];
      const common = {
        assignmentId: a.assignmentId,
        paramVersion: step.paramVersion,
        step: step.schedule.step,
        index: a.index,
      };
      this.send(
        w,
        item.kind === 'grad'
          ? { type: 'assign', ...common, microBatch: item.microBatch }
          : { type: 'assign-local', ...common, lr: item.job.lr, microBatches: item.job.microBatches },
        'assign',
      );
    }
  }

  private send(w: WorkerConnection, message: CoordinatorMessage, kind: 'assign' | 'other' = 'other'): void {
    this.sendFrame(w, encodeMessage(message), kind);
  }

  private sendFrame(w: WorkerConnection, frame: Uint8Array, kind: 'params' | 'assign' | 'other', payload = 0): void {
    if (!w.ws.open) return;
    if (w.ws.bufferedAmount > 2 * this.limits.maxBufferedBytes) {
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
    return [...this.workers.values()].map(
      ({
        ws: _ws,
        holding: _h,
        alive: _alive,
        bucket: _b,
        quarantined: _q,
        strikes: _s,
        checksPassed: _cp,
        checksPending: _cq,
        ...info
      }) => info,
    );
  }
}
