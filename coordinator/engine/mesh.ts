/**
 * The worker mesh as a GradientExecutor: hands micro-batches to connected workers, takes their
 * results, and puts a micro-batch back in the queue when its worker leaves or fails, so nothing is
 * lost. Idle workers pull the next micro-batch, so each gets work in proportion to its speed.
 * Every incoming frame is decoded and checked; a bad one is answered with a reject carrying its
 * error code and never reaches the aggregator.
 *
 * This file is the connection side: handshake, frames, dispatch, heartbeats, traffic. What a
 * result goes through before it counts is result-gate.ts's, the step's slots and how it ends
 * step-in-flight.ts's, and what is kept per connection worker-connection.ts's.
 */
import { DEFAULT_ARITHMETIC } from '../../shared/arithmetic.ts';
import { adapterParameterCount, type AdapterState } from '../../shared/lora/adapter.ts';
import { closeCodeFor, ErrorCodes, LoraMeshError, type ErrorCode } from '../../shared/errors.ts';
import { asBytes, decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import {
  PROTOCOL_VERSION,
  RELAY_PROTOCOL,
  type CoordinatorMessage,
  type BlockForward,
  type BlockResult,
  type BlockSum,
  type RelayPolicy,
  type Hello,
  type Result,
  type RunManifest,
} from '../../shared/protocol/messages.ts';
import { describeCodec, payloadBytes } from '../../shared/protocol/wire-codec.ts';
import { describeBaseSpec } from '../../shared/quant/formats.ts';
import type { GradientResult } from '../../shared/train/gradients.ts';
import type { MicroBatch } from '../../shared/train/micro-batch.ts';
import { StepSchedule, type LedgerEntry, type ScheduleOptions } from './scheduler.ts';
import { InOrderSum, type StepGradient } from '../../shared/train/aggregate.ts';
import type { GradientExecutor, LocalJob, StepResults } from './trainer.ts';
import { ByteCounter, wsFrameBytes } from './traffic.ts';
import { ParamsPublisher } from './params-publisher.ts';
import type { Peer, PeerEvents } from './peer.ts';
import { cleanPeerText } from '../../shared/protocol/peer-text.ts';
import { admitResult, ResultGate, type Admitted, type GateHost, type ResultChecks } from './result-gate.ts';
import { itemPositions, StepInFlight, type Holding, type WorkItem } from './step-in-flight.ts';
import { newConnection, workerInfo, type WorkerConnection, type WorkerInfo } from './worker-connection.ts';
import { admitBlockResult, takePart, type AdmittedBlocks, type BlockHolding } from './relay-blocks.ts';

export type { ResultChecks } from './result-gate.ts';
export type { WorkItem } from './step-in-flight.ts';
export type { WorkerInfo } from './worker-connection.ts';

export interface MeshOptions {
  manifest: RunManifest;
  log?: (line: string) => void;
  schedule?: ScheduleOptions;
  security?: Partial<SecurityLimits>;
  checks?: ResultChecks;
  /**
   * Whether a worker with this backend and memory limit (hello.memoryLimit, bytes) can hold the run's
   * model and micro-batches, and whether only by recomputing activations; workers that state no limit
   * are not checked.
   */
  memoryCheck?: (backend: string, limitBytes: number) => MemoryVerdict;
  /** every worker recomputes each block in the backward pass (welcome.recompute) */
  recompute?: boolean;
  /** the run's train.reductionBlock: the step's sum in that canonical order (shared/train/aggregate.ts) */
  reductionBlock?: number;
  /**
   * Someone else decides which idle worker computes for this run (the standing pool, across its runs): the
   * mesh then assigns only when offer() asks it to, and says when a worker takes or gives back an attempt.
   */
  arbiter?: DispatchArbiter;
  /** the run's policy a relay applies to its own workers (limits, deadlines, memory table), sent in its welcome */
  relayPolicy?: () => RelayPolicy;
  /** why this run cannot be served through relays (robust aggregation: every result is needed); absent: it can */
  relayRefusal?: string;
  /** URLs a relay's welcome lists for its workers to fall back to (this coordinator's own, other relays) */
  fallback?: string[] | ((peer: Peer) => string[]);
}

/** The pool's side of a run's dispatch (coordinator/pool/pool-mesh.ts). */
export interface DispatchArbiter {
  /** the run may have something new to hand out: a step began, an attempt came back, a worker became ready */
  wake(): void;
  /** `peer` took an attempt of `positions` token positions; `first`: its micro-batch's first attempt */
  took(peer: Peer, positions: number, first: boolean): void;
  /** `peer` no longer holds an attempt of this run */
  released(peer: Peer): void;
}

/** Most whole blocks a relay holds at once (what the parent keeps of its answer until its block-result). */
export const MAX_RELAY_BLOCKS = 16;

/** A worker's memory against the run: fits (perhaps only recomputing), or refused with the numbers. */
export type MemoryVerdict = { fits: true; recompute: boolean } | { fits: false; why: string };

/** Why a worker cannot load `manifest`'s compact base (its hello lists the formats it loads), or null. */
export function baseFormatRefusal(manifest: RunManifest, hello: Hello, whose: string): string | null {
  const baseFormat = manifest.model.baseFormat;
  if (!baseFormat || (hello.baseFormats ?? []).includes(baseFormat.format)) return null;
  return (
    `${whose} base is ${describeBaseSpec(baseFormat)}; the worker loads ` +
    `${cleanPeerText((hello.baseFormats ?? []).join(', ') || 'float32 checkpoints only', 80)}`
  );
}

/** Per-connection limits, on by default. */
export interface SecurityLimits {
  /** frames per second a connection may send (token bucket, burst = 2 s worth) */
  maxMessagesPerSecond: number;
  /** rejected frames before the connection is closed (quarantined) */
  maxRejects: number;
  /** a connection must finish hello within this many ms */
  handshakeTimeoutMs: number;
  /**
   * no new work for a worker whose unsent output exceeds this many bytes; 2× this closes it
   * (default: 2 parameter frames, at least 8 MiB)
   */
  maxBufferedBytes?: number;
}

export const DEFAULT_SECURITY: SecurityLimits = {
  maxMessagesPerSecond: 200,
  maxRejects: 50,
  handshakeTimeoutMs: 10_000,
};

export class MeshExecutor implements GradientExecutor {
  readonly workers = new Map<string, WorkerConnection>();
  /** the same connections by their peer (an arbiter names workers by peer) */
  private readonly byPeer = new Map<Peer, WorkerConnection>();
  /** every frame by direction and kind; per worker in WorkerInfo */
  readonly traffic = new ByteCounter();
  /** the parameter versions workers hold, and the frames that bring them there */
  private readonly params: ParamsPublisher;
  private readonly adapterValues: number;
  /** the result checks (result-gate.ts): what an admitted result goes through before it counts */
  private readonly gate: ResultGate<WorkerConnection>;
  /** what workers hold, by name: what trusted recomputations use (a copy, made when a check first needs it) */
  private adapter: AdapterState | null = null;
  private inFlight: StepInFlight | null = null;
  /** who computed what in the last completed step */
  lastLedger: LedgerEntry[] = [];
  private readonly log: (line: string) => void;
  private readyWaiters: { count: number; resolve: () => void }[] = [];

  private readonly limits: Required<SecurityLimits>;
  /** per relay id: its workers this mesh convicted (a block they computed afterwards is computed again) */
  private readonly expelledBehind = new Map<string, Set<string>>();
  /** refused frames and results by error code, over the whole run (the final summary) */
  readonly rejections = new Map<string, number>();
  /** workers closed for offences (failed checks, floods, admin kicks) */
  quarantinedCount = 0;

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
    const host: GateHost<WorkerConnection> = {
      log: this.log,
      countRejection: (code) => this.countRejection(code),
      dispatch: () => this.dispatch(),
      adapter: () => (this.adapter ??= this.params.held()),
      workers: this.workers,
      accept: (...result) => this.accept(...result),
      expel: (w, closing, refusal) => {
        if (refusal) {
          if (w.holding?.step === refusal.step.schedule.step) this.release(w, 'lost');
          this.send(w, { type: 'reject', code: refusal.code, message: refusal.why });
        }
        this.closeWith(w, ErrorCodes.QUARANTINED, closing);
      },
      abort: (err) => this.abort(err),
    };
    this.gate = new ResultGate(options.checks, host);
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

  /** Ready workers, those behind a relay included (a relay counts as its ready workers). */
  readyCount(): number {
    let n = 0;
    for (const w of this.workers.values()) if (w.state === 'ready') n += w.relayCapacity ?? 1;
    return n;
  }

  private wakeReadyWaiters(): void {
    const ready = this.readyCount();
    this.readyWaiters = this.readyWaiters.filter((waiter) =>
      ready >= waiter.count ? (waiter.resolve(), false) : true,
    );
  }

  /** Makes a new parameter version current on every worker that has joined (params-publisher.ts). */
  publish(paramVersion: number, adapter: AdapterState): void {
    const { frame, payload } = this.params.publish(paramVersion, adapter);
    this.adapter = null;
    for (const w of this.workers.values()) if (w.state !== 'handshake') this.sendFrame(w, frame, 'params', payload);
  }

  async compute(step: number, paramVersion: number, microBatches: MicroBatch[]): Promise<StepResults> {
    const slots: (GradientResult | undefined)[] = new Array(microBatches.length);
    const sum = new InOrderSum(slots, this.options.reductionBlock);
    const results = await this.run(
      step,
      paramVersion,
      microBatches.map((microBatch) => ({ kind: 'grad', microBatch })),
      slots,
      sum,
    );
    return { results, sum: sum.finish() };
  }

  /**
   * A relay's blocks: the micro-batches of whole reduction blocks of `blockSize` (the last may be shorter), each
   * block's results summed in order, undivided (shared/train/aggregate.ts), with the ledger of who computed which.
   */
  async computeBlocks(
    step: number,
    paramVersion: number,
    microBatches: MicroBatch[],
    blockSize: number,
    /** the parent step's micro-batches: results are bounded for that sum (relay-blocks.ts checks the same) */
    boundSlots?: number,
  ): Promise<{ results: GradientResult[]; blocks: StepGradient[]; ledger: LedgerEntry[]; norms: number[] }> {
    const slots: (GradientResult | undefined)[] = new Array(microBatches.length);
    const sum = new InOrderSum(slots, blockSize);
    const items: WorkItem[] = microBatches.map((microBatch) => ({ kind: 'grad', microBatch }));
    const running = this.run(step, paramVersion, items, slots, sum);
    const flight = this.inFlight!; // its screen entries keep each result's norm, measured on arrival
    flight.boundSlots = boundSlots;
    const results = await running;
    return {
      results,
      blocks: sum.blockSums(),
      ledger: this.lastLedger,
      norms: flight.screened.map((s) => s!.norm),
    };
  }

  /** A relay passes on its parent's parameter frame (params-publisher.ts forward) to every worker that joined. */
  forwardParams(paramVersion: number, frame: Uint8Array, payload: number, held: Float32Array): void {
    this.params.forward(paramVersion, { frame, payload }, held);
    this.adapter = null;
    for (const w of this.workers.values()) if (w.state !== 'handshake') this.sendFrame(w, frame, 'params', payload);
  }

  /** A relay's parent convicted this worker: it is closed, its name refused from now on; false if unknown. */
  expel(workerId: string, why: string): boolean {
    const w = this.workers.get(workerId);
    if (!w) return false;
    this.gate.ban(w.name);
    this.countRejection(ErrorCodes.SPOT_CHECK);
    this.closeWith(w, ErrorCodes.QUARANTINED, why);
    return true;
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
      const positions = items.map(itemPositions);
      const schedule = new StepSchedule(step, positions, (id, n) => this.expectedMs(id, n), this.options.schedule);
      const settlement = {
        resolve: (slots: GradientResult[], ledger: LedgerEntry[]) => {
          this.inFlight = null;
          this.lastLedger = ledger;
          resolve(slots);
        },
        reject,
      };
      this.inFlight = new StepInFlight(paramVersion, schedule, items, results, sum, settlement);
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
    step.fail(reason);
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
    const w = newConnection(ws, this.limits.maxMessagesPerSecond);
    this.workers.set(w.id, w);
    this.byPeer.set(ws, w);
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
      // A relay (upgraded with the relay token: operator-run and trusted) answers in one frame per block sum and per
      // result sent up whole, hundreds at once at a step's start (probation): its frames are checked, not rate-limited.
      if (!w.ws.relay && !w.bucket.take())
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
        case 'capacity':
          if (w.relayCapacity === null)
            throw new LoraMeshError(ErrorCodes.STATE, 'capacity from a worker that is no relay');
          w.relayCapacity = message.microBatches;
          this.wakeReadyWaiters();
          return this.dispatch();
        case 'block-sum':
        case 'block-forward':
          return this.onBlockPart(w, message);
        case 'block-result':
          return this.onBlockResult(w, message);
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

  /**
   * Tells the peer why (reject frame), closes with closeCodeFor(code) (1008, policy violation), and
   * stops listening to it.
   */
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
    if (name !== undefined && this.gate.isBanned(name)) {
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
        `this run sends ${describeCodec(up)} up and ${describeCodec(down)} down; ` +
          `the worker supports ${cleanPeerText((codecs ?? ['f32']).join(', '), 80)}`,
      );
      return;
    }
    const baseRefusal = baseFormatRefusal(this.options.manifest, hello, "this run's");
    if (baseRefusal) {
      this.closeWith(w, ErrorCodes.CODEC, baseRefusal);
      return;
    }
    // An older worker's hello has no list: its kernels are simd128's.
    const arithmetic = this.options.manifest.arithmetic ?? DEFAULT_ARITHMETIC;
    const offered = hello.arithmetic ?? [DEFAULT_ARITHMETIC];
    if (!offered.includes(arithmetic)) {
      this.closeWith(
        w,
        ErrorCodes.ARITHMETIC,
        `this run computes with arithmetic ${arithmetic}; ` +
          `the worker supports ${cleanPeerText(offered.join(', ') || 'none', 80)}`,
      );
      return;
    }
    const elsewhere = !hello.relay && !w.ws.relay ? this.redirect?.(w.ws) : null;
    if (elsewhere) {
      // the socket work of this worker belongs to an ingestion thread: it reconnects there at once
      this.send(w, { type: 'redirect', url: elsewhere });
      w.quarantined = true; // nothing more from it here
      w.ws.close(1000, 'redirect');
      setTimeout(() => w.ws.terminate(), 1000).unref();
      return;
    }
    if (hello.relay && w.ws.relay && hello.relayProtocol !== RELAY_PROTOCOL) {
      this.closeWith(
        w,
        ErrorCodes.PROTOCOL_VERSION,
        `relay protocol ${hello.relayProtocol ?? 'none (a relay from before relay protocol numbers)'} is not supported; this coordinator speaks ` +
          `relay protocol ${RELAY_PROTOCOL}: upgrade the relays and the coordinator together`,
      );
      return;
    }
    if (hello.relay) {
      const why = !w.ws.relay
        ? 'a relay connects with the relay token (X-Loramesh-Role: relay)'
        : this.options.manifest.local
          ? 'local-steps runs need every job on its own; relays serve synchronous --aggregation sum runs'
          : this.options.arbiter
            ? 'relays serve single runs, not a standing pool'
            : this.options.relayRefusal;
      if (why) {
        this.closeWith(w, ErrorCodes.AUTH, why);
        return;
      }
      w.relayCapacity = 0;
    }
    const memory = hello.memoryLimit === undefined ? undefined : this.options.memoryCheck?.(backend, hello.memoryLimit);
    if (memory && !memory.fits) {
      this.closeWith(w, ErrorCodes.MEMORY, memory.why);
      return;
    }
    const recompute = !!this.options.recompute || (memory?.fits === true && memory.recompute);
    Object.assign(w, {
      name: name ?? w.id,
      backend,
      platform,
      adapter: adapter ?? '',
      slow: !!slow,
      arithmetic: offered.map((v) => cleanPeerText(v, 20)),
      state: 'loading',
    });
    this.log(`worker ${w.id} (${w.name}, ${platform}/${backend}${adapter ? ` on ${adapter}` : ''}) joined`);
    if (slow)
      this.log(`warning: worker ${w.id} runs on a slow fallback backend (${backend}${adapter ? `, ${adapter}` : ''})`);
    if (recompute && !this.options.recompute)
      this.log(`worker ${w.id} holds the run's micro-batches only by recomputing activations: told to`);
    this.send(w, {
      type: 'welcome',
      workerId: w.id,
      manifest: this.options.manifest,
      ...(recompute ? { recompute } : {}),
      ...this.fallbackFor(w.ws),
      ...(w.relayCapacity !== null && this.options.relayPolicy ? { relayPolicy: this.options.relayPolicy() } : {}),
      ...(w.relayCapacity !== null ? { relayProtocol: RELAY_PROTOCOL } : {}),
    });
    const keyframe = this.params.keyframe();
    if (keyframe) this.sendFrame(w, keyframe.frame, 'params', keyframe.payload);
  }

  private fallbackFor(peer: Peer): { fallback?: string[] } {
    const f = this.options.fallback;
    const list = typeof f === 'function' ? f(peer) : f;
    return list?.length ? { fallback: list } : {};
  }

  /**
   * Where a worker that says hello goes instead (an ingestion thread's socket, coordinator/relay/ingest.ts), or
   * null: it stays. Set once the threads listen.
   */
  redirect: ((peer: Peer) => string | null) | null = null;

  private onReady(w: WorkerConnection): void {
    if (w.state === 'handshake') throw new LoraMeshError(ErrorCodes.STATE, 'ready before hello');
    if (w.state === 'ready') throw new LoraMeshError(ErrorCodes.STATE, 'ready sent twice');
    w.state = 'ready';
    this.log(`worker ${w.id} ready`);
    this.wakeReadyWaiters();
    this.dispatch();
  }

  private onResult(w: WorkerConnection, r: Result): void {
    this.traffic.countPayloadIn(payloadBytes(r.grads)); // duplicates and refused results moved their bytes too
    const held = w.holding;
    if (!held || held.group || held.assignmentId !== r.assignmentId)
      throw new LoraMeshError(ErrorCodes.ASSIGNMENT, `assignment ${r.assignmentId} is not held by this worker`);
    const now = Date.now();
    this.dropHolding(w);
    const step = this.inFlight;
    if (!step || held.step !== step.schedule.step) {
      // The step finished without this attempt (a copy won): the late result is simply not needed.
      this.dispatch();
      return;
    }
    let admitted: Admitted;
    try {
      const item = step.items[held.index];
      admitted = admitResult(
        r,
        { paramVersion: step.paramVersion, item, slots: step.boundSlots ?? step.items.length },
        this.options.manifest,
        this.adapterValues,
      );
    } catch (err) {
      step.schedule.lose(held.assignmentId, 'rejected', now);
      this.dispatch();
      throw err;
    }
    if (this.gate.holdForCheck(w, held, r, admitted, step)) {
      // Held until the trusted recomputation agrees; meanwhile the worker may take more work.
      this.dispatch();
      return;
    }
    this.accept(w, held, r, admitted, false, step, now);
  }

  /** A result that passed its checks: its worker is credited, and the first for its slot is used. */
  private accept(
    w: WorkerConnection,
    held: Holding,
    r: Result,
    { grads, norm }: Admitted,
    verified: boolean,
    step: StepInFlight,
    now: number,
  ): void {
    const positions = itemPositions(step.items[held.index]);
    const tps = positions / Math.max(1e-3, (now - held.sentAt) / 1000); // measured here: includes the network
    w.throughput = w.throughput === 0 ? tps : 0.7 * w.throughput + 0.3 * tps;
    w.microBatchesDone++;
    w.tokensDone += r.tokenCount;
    const outcome = step.schedule.complete(held.assignmentId, now);
    if (outcome === 'duplicate') w.discarded++;
    if (outcome === 'used') {
      w.used++;
      w.strikes = Math.max(0, w.strikes - 1);
      step.use(
        { lossSum: r.lossSum, tokenCount: r.tokenCount, grads },
        { index: held.index, workerId: w.id, norm, verified },
      );
    }
    this.gate.closeIfComplete(step);
    this.dispatch();
  }

  /**
   * A worker says it cannot deliver. Naming the assignment it holds releases it (a strike: too
   * many and it is quarantined); naming anything else is a rejected frame, so a flood of them
   * quarantines the sender instead of filling the ledger with lost attempts.
   */
  private onWorkerError(w: WorkerConnection, code: string, message: string, assignmentId?: string): void {
    if (!w.holding || assignmentId !== w.holding.assignmentId) {
      const named = assignmentId === undefined ? 'no assignment' : `assignment ${cleanPeerText(assignmentId, 40)}`;
      throw new LoraMeshError(ErrorCodes.ASSIGNMENT, `worker-error for ${named}, which this worker does not hold`);
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
    this.byPeer.delete(w.ws);
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
    this.dropHolding(w);
    if (this.inFlight && this.inFlight.schedule.step === held.step)
      for (const id of held.group?.attempts ?? [held.assignmentId])
        this.inFlight.schedule.lose(id, outcome, Date.now());
  }

  private dropHolding(w: WorkerConnection): void {
    w.holding = null;
    this.options.arbiter?.released(w.ws);
  }

  private dispatch(): void {
    if (this.options.arbiter) return this.options.arbiter.wake();
    const step = this.inFlight;
    if (!step) return;
    const now = Date.now();
    for (const w of this.workers.values()) if (this.mayAssign(w, step)) this.assign(w, step, now);
  }

  /** Whether worker `w` may take an attempt of `step` now (it need not have one to take). */
  private mayAssign(w: WorkerConnection, step: StepInFlight): boolean {
    if (w.state !== 'ready' || w.holding || this.params.version !== step.paramVersion || w.quarantined) return false;
    if (w.relayCapacity !== null && (w.relayCapacity === 0 || step.items[0]?.kind !== 'grad')) return false;
    return w.ws.bufferedAmount <= this.limits.maxBufferedBytes; // backpressure: it has not taken what we sent
  }

  /**
   * With an arbiter: whether the worker on `peer` could take a micro-batch's first attempt or a retry now (not
   * a straggler copy), which is what offer(peer, false) would hand it.
   */
  wants(peer: Peer): boolean {
    const step = this.inFlight;
    const w = this.byPeer.get(peer);
    return !!step && !!w && step.schedule.unassigned > 0 && this.mayAssign(w, step);
  }

  /** Where the connection on `peer` is in its handshake (undefined: not one of this run's). */
  stateOf(peer: Peer): WorkerConnection['state'] | undefined {
    return this.byPeer.get(peer)?.state;
  }

  /** With an arbiter: whether the step in flight has a micro-batch waiting for its first attempt or a retry. */
  get hasFreshWork(): boolean {
    return !!this.inFlight && this.inFlight.schedule.unassigned > 0;
  }

  /**
   * With an arbiter: hands the worker on `peer` an attempt of the step in flight, if there is one for it;
   * `copies`: a straggler copy will do. Whether it assigned.
   */
  offer(peer: Peer, copies: boolean): boolean {
    const step = this.inFlight;
    const w = this.byPeer.get(peer);
    if (!step || !w || !this.mayAssign(w, step)) return false;
    if (!copies && step.schedule.unassigned === 0) return false;
    return this.assign(w, step, Date.now());
  }

  private assign(w: WorkerConnection, step: StepInFlight, now: number): boolean {
    if (w.relayCapacity !== null) return this.assignBlocks(w, step, now);
    const a = step.schedule.next(w.id, now);
    if (!a) return false;
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
    this.options.arbiter?.took(w.ws, itemPositions(item), a.reason === 'first');
    this.send(
      w,
      item.kind === 'grad'
        ? { type: 'assign', ...common, microBatch: item.microBatch }
        : { type: 'assign-local', ...common, lr: item.job.lr, microBatches: item.job.microBatches },
      'assign',
    );
    return true;
  }

  /**
   * A relay takes whole reduction blocks whose micro-batches no one holds, as many as its workers can compute at
   * once, or, when none is free, copies of blocks another relay holds past its deadline (the first whole answer
   * counts); it is told which results to send up whole (this run's secret spot checks) and how to screen the rest.
   */
  private assignBlocks(w: WorkerConnection, step: StepInFlight, now: number): boolean {
    const blockSize = Math.min(this.options.reductionBlock ?? Infinity, step.items.length);
    const maxBlocks = Math.min(MAX_RELAY_BLOCKS, Math.max(1, Math.ceil(w.relayCapacity! / blockSize)));
    const got = step.schedule.nextBlocks(w.id, blockSize, maxBlocks, now);
    if (!got) return false;
    if (got.copies)
      this.log(
        `block(s) ${got.blocks.join(', ')} of step ${step.schedule.step} are past their relay's deadline; ` +
          `also giving them to relay ${w.id}`,
      );
    const indices = got.attempts.map((a) => a.index);
    const forward = indices.filter((i) => this.gate.spotted(step.schedule.step, i));
    const group: BlockHolding = {
      blockSize,
      blocks: got.blocks,
      indices,
      attempts: got.attempts.map((a) => a.assignmentId),
      forward,
      sums: new Map(),
      forwarded: new Map(),
    };
    w.holding = { assignmentId: got.group, step: step.schedule.step, index: indices[0], sentAt: now, group };
    const microBatch = (i: number) => (step.items[i] as Extract<WorkItem, { kind: 'grad' }>).microBatch;
    this.send(
      w,
      {
        type: 'assign-blocks',
        assignmentId: got.group,
        paramVersion: step.paramVersion,
        step: step.schedule.step,
        blockSize,
        blocks: got.blocks.map((b) => ({
          block: b,
          microBatches: indices.filter((i) => Math.floor(i / blockSize) === b).map(microBatch),
        })),
        forward,
        slots: step.items.length,
        ...this.gate.relayScreen(),
      },
      'assign',
    );
    return true;
  }

  /** One frame of a relay's answer (a block's sum, or a result sent up whole), kept until its block-result. */
  private onBlockPart(w: WorkerConnection, m: BlockSum | BlockForward): void {
    if (w.relayCapacity === null) throw new LoraMeshError(ErrorCodes.STATE, `${m.type} from a worker that is no relay`);
    this.traffic.countPayloadIn(payloadBytes(m.grads)); // refused parts moved their bytes too
    const held = w.holding;
    if (!held?.group || held.assignmentId !== m.assignmentId)
      throw new LoraMeshError(ErrorCodes.ASSIGNMENT, `assignment ${m.assignmentId} is not held by this relay`);
    takePart(m, held.group);
  }

  /** A relay's answer for the blocks it holds: checked, the results sent up whole verified, then summed whole. */
  private onBlockResult(w: WorkerConnection, m: BlockResult): void {
    if (w.relayCapacity === null)
      throw new LoraMeshError(ErrorCodes.STATE, 'block-result from a worker that is no relay');
    if (m.traffic) this.traffic.countRelayed(m.traffic.bytesIn, m.traffic.bytesOut);
    const held = w.holding;
    if (!held?.group || held.assignmentId !== m.assignmentId)
      throw new LoraMeshError(ErrorCodes.ASSIGNMENT, `assignment ${m.assignmentId} is not held by this relay`);
    this.dropHolding(w);
    const step = this.inFlight;
    if (!step || held.step !== step.schedule.step) return this.dispatch();
    // while it is checked (below, or a trusted recomputation of what it sent up whole) its blocks are not copied
    step.schedule.answered(held.group.attempts);
    const expelled = this.expelledBehind.get(w.id);
    const tainted = expelled && m.items.find((item) => expelled.has(item.worker));
    if (tainted) {
      // computed before the relay heard of the conviction: the blocks are handed out again, no offence of the relay's
      this.log(`relay ${w.id}: blocks computed partly by expelled worker ${cleanPeerText(tainted.worker, 64)}; again`);
      for (const id of held.group.attempts) step.schedule.lose(id, 'lost', Date.now());
      return this.dispatch();
    }
    let admitted: AdmittedBlocks;
    try {
      admitted = admitBlockResult(m, held.group, step, this.options.manifest, this.adapterValues);
    } catch (err) {
      for (const id of held.group.attempts) step.schedule.lose(id, 'rejected', Date.now());
      this.dispatch();
      throw err;
    }
    if (admitted.forwarded.size === 0) return this.acceptBlocks(w, held, admitted, step);
    void this.verifyRelayed(w, held, admitted, step).catch((err) => this.abort(err as Error));
    this.dispatch();
  }

  /** The results a relay sent up whole, recomputed one by one; one that disagrees convicts its worker. */
  private async verifyRelayed(
    w: WorkerConnection,
    held: Holding,
    admitted: AdmittedBlocks,
    step: StepInFlight,
  ): Promise<void> {
    const verified = new Set<number>();
    for (const [index, grads] of admitted.forwarded) {
      const item = admitted.items.get(index)!;
      const { relative, agrees } = await this.gate.checkRelayed(step, index, grads, item.lossSum, item.norm);
      if (!step.open) return;
      if (agrees) {
        verified.add(index);
        continue;
      }
      // The blocks carry the liar's result: none of them counts; its earlier blocks in this step go back too.
      for (const id of held.group!.attempts) step.schedule.lose(id, 'rejected', Date.now());
      const who = `${w.id}/${item.worker}`;
      const why =
        `result of micro-batch ${index} of step ${held.step} (worker ${cleanPeerText(item.name, 64)} behind relay ` +
        `${w.id}) disagrees with a trusted recomputation (relative L2 ${relative.toExponential(2)})`;
      this.countRejection(ErrorCodes.SPOT_CHECK);
      this.log(`${who} failed a spot check (${ErrorCodes.SPOT_CHECK}): ${why}; the relay expels it`);
      step.takeBack(who);
      this.gate.ban(item.name);
      this.expelledBehind.set(w.id, (this.expelledBehind.get(w.id) ?? new Set()).add(item.worker));
      this.send(w, { type: 'expel', worker: item.worker, reason: why });
      this.dispatch();
      return;
    }
    this.acceptBlocks(w, held, admitted, step, verified);
  }

  /** A relay's checked blocks count: each micro-batch is credited to the worker behind the relay that computed it. */
  private acceptBlocks(
    w: WorkerConnection,
    held: Holding,
    { partials, items }: AdmittedBlocks,
    step: StepInFlight,
    verified: ReadonlySet<number> = new Set(),
  ): void {
    const group = held.group!;
    const now = Date.now();
    const positions = group.indices.reduce((n, i) => n + itemPositions(step.items[i]), 0);
    const tps = positions / Math.max(1e-3, (now - held.sentAt) / 1000);
    w.throughput = w.throughput === 0 ? tps : 0.7 * w.throughput + 0.3 * tps;
    for (const [b, partial] of partials) {
      const indices = group.indices.filter((i) => Math.floor(i / group.blockSize) === b);
      const attemptOf = (i: number) => group.attempts[group.indices.indexOf(i)];
      // a block counts whole or not at all: a copy of it (another relay's, whole) may have won already
      if (indices.some((i) => step.schedule.isDone(i))) {
        for (const i of indices) {
          if (!step.schedule.isDone(i)) step.schedule.lose(attemptOf(i), 'lost', now);
          else if (step.schedule.complete(attemptOf(i), now) === 'duplicate') w.discarded++;
        }
        continue;
      }
      const parts = indices.map((i) => {
        const attemptId = attemptOf(i);
        step.schedule.complete(attemptId, now);
        const item = items.get(i)!;
        const computedBy = `${w.id}/${item.worker}`;
        step.schedule.attempts.get(attemptId)!.computedBy = computedBy;
        return {
          result: { lossSum: item.lossSum, tokenCount: item.tokenCount, grads: new Map() },
          screened: { index: i, workerId: computedBy, norm: item.norm, verified: verified.has(i), relayed: true },
        };
      });
      step.useBlock(b, partial, parts);
      w.used += indices.length;
      w.microBatchesDone += indices.length;
      w.tokensDone += parts.reduce((n, p) => n + p.result.tokenCount, 0);
    }
    w.strikes = Math.max(0, w.strikes - 1);
    this.gate.closeIfComplete(step);
    this.dispatch();
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
    return [...this.workers.values()].map(workerInfo);
  }
}
