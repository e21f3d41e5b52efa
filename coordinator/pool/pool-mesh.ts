/**
 * The standing pool's worker mesh: one set of worker connections shared by every open run (issue 18).
 *
 * A worker joins the pool as it joins a run (hello with the join token checked at the upgrade), is told the
 * pool's base (pool-welcome), loads it once and answers ready. Each open run is then a channel on its
 * connection (run-open, then frames of that run's own protocol wrapped in `channel` messages), and each run
 * keeps its own MeshExecutor: its hello checks (codecs, arithmetic, memory), parameter versions, result gates
 * (bounds, non-finite, spot checks, outlier screen), ledger and stragglers, exactly as a run alone has them.
 * A worker that one run refuses (a codec it lacks) still serves the others; one that a run quarantines leaves
 * the pool.
 *
 * What the pool adds is the choice of work: a worker holds at most one attempt of any run at a time, and
 * when it is idle the fair share (fair-share.ts) picks among the runs that have a micro-batch waiting for it.
 * Straggler copies go out only when no run has fresh work for the worker, and they are never charged. Who
 * computes what never enters a run's sum (its Trainer adds results in micro-batch order), so each run's
 * adapter is bit-identical to the run trained alone.
 */
import { nanoid } from 'nanoid';
import { DEFAULT_ARITHMETIC } from '../../shared/arithmetic.ts';
import { closeCodeFor, ErrorCodes, LoraMeshError, type ErrorCode } from '../../shared/errors.ts';
import { asBytes, decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import {
  PROTOCOL_VERSION,
  type CoordinatorMessage,
  type Hello,
  type RunManifest,
} from '../../shared/protocol/messages.ts';
import { cleanPeerText } from '../../shared/protocol/peer-text.ts';
import {
  baseFormatRefusal,
  DEFAULT_SECURITY,
  type DispatchArbiter,
  type MeshExecutor,
  type SecurityLimits,
  type WorkerInfo,
} from '../engine/mesh.ts';
import type { Peer, PeerEvents } from '../engine/peer.ts';
import { TokenBucket } from '../engine/token-bucket.ts';
import { ByteCounter, wsFrameBytes } from '../engine/traffic.ts';
import { FairShare, type ShareSettings } from './fair-share.ts';

/** One attempt handed to a pool worker: what the pool's ledger and its fairness figures read. */
export interface PoolServed {
  run: string;
  worker: string;
  /** token positions of the micro-batch (padding included: the work, not the loss tokens) */
  positions: number;
  /** a micro-batch's first attempt (charged to the run's share); false: a retry or a straggler copy */
  first: boolean;
  /** the runs that had micro-batches waiting for a first attempt or retry as this one went out (it included) */
  waiting: string[];
}

/** A pool worker as the dashboard shows it: no run names (tenants see workers, not each other's runs). */
export interface PoolWorkerInfo
  extends Pick<WorkerInfo, 'id' | 'name' | 'backend' | 'platform' | 'adapter' | 'slow' | 'arithmetic' | 'state'> {
  /** runs open on it now, and whether it is computing */
  runs: number;
  busy: boolean;
  microBatches: number;
  bytesIn: number;
  bytesOut: number;
}

interface RunChannel {
  lane: Lane;
  peer: Peer;
  events: PeerEvents;
  open: boolean;
}

interface PoolWorker extends Omit<PoolWorkerInfo, 'runs' | 'busy'> {
  peer: Peer;
  alive: boolean;
  bucket: TokenBucket;
  rejected: number;
  closed: boolean;
  channels: Map<string, RunChannel>;
  /** runs that closed their channel on this connection (declined, refused): not opened again */
  closedRuns: Set<string>;
  /** the runs whose attempts it holds now (at most one each) */
  busy: Set<string>;
  /** how many runs' attempts it offers to hold at once (its hello's multiRun; the pool caps it) */
  offered: number;
}

interface Lane {
  id: string;
  mesh: MeshExecutor | null;
  priority: number;
}

/** A run's refusals that retrying cannot change: the run stays closed on that connection. */
const PERMANENT_REFUSALS = new Set<string>([
  ErrorCodes.CODEC,
  ErrorCodes.ARITHMETIC,
  ErrorCodes.MEMORY,
  ErrorCodes.QUARANTINED,
  ErrorCodes.PROTOCOL_VERSION,
]);
/** ms before a run is offered again to a worker whose channel closed for a passing reason */
const REOPEN_MS = 1000;

export interface PoolMeshOptions {
  /** the pool's base: model config and files; adapter empty (no run) */
  manifest: RunManifest;
  log?: (line: string) => void;
  security?: Partial<SecurityLimits>;
  /** every attempt as it is handed out (the pool's fairness figures, tests) */
  onServe?: (s: PoolServed) => void;
  /**
   * the most runs' attempts one worker holds at once, to compute in one pass (the multi-adapter pass; never
   * more than the worker's hello offers). Default 1: one attempt at a time (bench/RESULTS.md, "Standing pool",
   * has the measured trade-off)
   */
  maxRunsPerWorker?: number;
  /**
   * unsent bytes on a worker's connection above which it gets no new work (default 64 MiB), and above which it
   * is dropped (default 1 GiB): one limit for the connection every run shares
   */
  buffer?: { soft: number; hard: number };
}

export class PoolMesh {
  private readonly workers = new Map<string, PoolWorker>();
  private readonly lanes = new Map<string, Lane>();
  /** which worker and run each run's view of a connection belongs to */
  private readonly channelOf = new Map<Peer, { worker: PoolWorker; runId: string }>();
  private readonly share = new FairShare();
  private readonly limits: SecurityLimits;
  private readonly log: (line: string) => void;
  readonly traffic = new ByteCounter();
  private scheduled = false;
  private lastHeartbeat = 0;
  /** the most runs' attempts one worker holds at once (PoolMeshOptions.maxRunsPerWorker; benches change it) */
  maxRunsPerWorker: number;

  /** re-runs dispatch while workers wait on backpressure (a socket's drain has no event here) */
  private readonly tick: ReturnType<typeof setInterval>;
  private readonly buffer: { soft: number; hard: number };

  constructor(private readonly options: PoolMeshOptions) {
    this.log = options.log ?? (() => {});
    this.buffer = options.buffer ?? { soft: 64 << 20, hard: 1 << 30 };
    this.tick = setInterval(() => this.wake(), 250);
    this.tick.unref();
    this.maxRunsPerWorker = Math.max(1, options.maxRunsPerWorker ?? 1);
    this.limits = { ...DEFAULT_SECURITY, ...options.security };
  }

  /** The run's dispatch arbiter, for its MeshExecutor (MeshOptions.arbiter); then open() the run. */
  arbiter(runId: string, settings: ShareSettings): DispatchArbiter {
    if (this.lanes.has(runId)) throw new LoraMeshError(ErrorCodes.STATE, `run ${runId} is already open`);
    this.lanes.set(runId, { id: runId, mesh: null, priority: settings.priority });
    this.share.add(runId, settings);
    return {
      wake: () => this.wake(),
      took: (peer, positions, first) => {
        const at = this.channelOf.get(peer);
        if (!at) return;
        at.worker.busy.add(runId);
        at.worker.microBatches++;
        if (first) this.share.charge(runId, positions);
        if (this.options.onServe) {
          const waiting = [...this.lanes.values()].filter((l) => l.id === runId || l.mesh?.hasFreshWork);
          this.options.onServe({
            run: runId,
            worker: at.worker.id,
            positions,
            first,
            waiting: waiting.map((l) => l.id),
          });
        }
      },
      released: (peer) => {
        const at = this.channelOf.get(peer);
        at?.worker.busy.delete(runId);
        this.wake();
      },
    };
  }

  /** The run's mesh is built: every ready worker is offered the run (its own hello checks follow). */
  open(runId: string, mesh: MeshExecutor): void {
    const lane = this.lanes.get(runId);
    if (!lane) throw new LoraMeshError(ErrorCodes.STATE, `run ${runId} has no arbiter`);
    lane.mesh = mesh;
    for (const w of this.workers.values()) if (w.state === 'ready') this.openChannel(w, lane);
  }

  /** The run is over (finished, cancelled, failed): its channels close on every worker. */
  close(runId: string, reason: string): void {
    const lane = this.lanes.get(runId);
    if (!lane) return;
    for (const w of this.workers.values()) {
      this.closeChannel(w, runId, reason, true, false);
      w.closedRuns.delete(runId); // the run is gone: nothing left to keep closed
    }
    this.lanes.delete(runId);
    this.share.remove(runId);
    this.wake();
  }

  /** Tokens charged to a run so far (first attempts only). */
  charged(runId: string): number {
    return this.share.charged(runId);
  }

  readyCount(): number {
    return [...this.workers.values()].filter((w) => w.state === 'ready').length;
  }

  info(): PoolWorkerInfo[] {
    return [...this.workers.values()].map(
      ({
        peer: _p,
        alive: _a,
        bucket: _b,
        rejected: _r,
        closed: _c,
        closedRuns: _cr,
        offered: _o,
        channels,
        busy,
        ...w
      }) => ({
        ...w,
        runs: channels.size,
        busy: busy.size > 0,
      }),
    );
  }

  /** A new connection (the join token was checked at the upgrade); returns the handlers of its events. */
  attach(peer: Peer): PeerEvents {
    const w: PoolWorker = {
      id: nanoid(10),
      name: '',
      backend: '',
      platform: '',
      adapter: '',
      slow: false,
      arithmetic: [],
      state: 'handshake',
      peer,
      alive: true,
      bucket: new TokenBucket(this.limits.maxMessagesPerSecond),
      rejected: 0,
      closed: false,
      channels: new Map(),
      closedRuns: new Set(),
      busy: new Set(),
      offered: 1,
      microBatches: 0,
      bytesIn: 0,
      bytesOut: 0,
    };
    this.workers.set(w.id, w);
    const handshake = setTimeout(() => {
      if (w.state === 'handshake')
        this.expel(w, ErrorCodes.LIMIT, `no hello within ${this.limits.handshakeTimeoutMs} ms`);
    }, this.limits.handshakeTimeoutMs);
    handshake.unref();
    return {
      frame: (data, isBinary) => this.onFrame(w, data, isBinary),
      pong: () => {
        w.alive = true;
      },
      close: () => {
        clearTimeout(handshake);
        this.onClose(w);
      },
      error: (err) => this.log(`pool worker ${w.id}: socket error ${cleanPeerText(err.message, 200)}`),
    };
  }

  /** Pings every worker; one that did not answer the previous ping is dropped (each run requeues its work). */
  heartbeat(intervalMs = Infinity): void {
    const now = Date.now();
    const lagged = this.lastHeartbeat > 0 && now - this.lastHeartbeat > 1.5 * intervalMs;
    this.lastHeartbeat = now;
    for (const w of this.workers.values()) {
      if (lagged) w.alive = true;
      if (!w.alive) {
        this.log(`pool worker ${w.id} missed a heartbeat; dropping it`);
        w.peer.terminate();
        continue;
      }
      w.alive = false;
      w.peer.ping();
    }
  }

  /** Drops every connection (the pool is closing; workers reconnect to a restarted pool). */
  terminateAll(): void {
    clearInterval(this.tick);
    for (const w of this.workers.values()) w.peer.terminate();
  }

  private onFrame(w: PoolWorker, data: Uint8Array, isBinary: boolean): void {
    const wire = wsFrameBytes(data.length, true);
    w.bytesIn += wire;
    this.traffic.countIn(wire);
    w.alive = true;
    if (w.closed) return;
    try {
      if (!w.bucket.take())
        throw new LoraMeshError(ErrorCodes.RATE, `more than ${this.limits.maxMessagesPerSecond} messages per second`);
      if (!isBinary) throw new LoraMeshError(ErrorCodes.DECODE, 'text frames are not part of the protocol');
      const message = decodeMessage(asBytes(data));
      if (w.state === 'handshake' && message.type !== 'hello')
        throw new LoraMeshError(ErrorCodes.STATE, `${message.type} before hello`);
      switch (message.type) {
        case 'hello':
          return this.onHello(w, message);
        case 'ready':
          if (w.state === 'ready') throw new LoraMeshError(ErrorCodes.STATE, 'ready sent twice');
          w.state = 'ready';
          this.log(`pool worker ${w.id} ready`);
          for (const lane of this.lanes.values()) this.openChannel(w, lane);
          return;
        case 'channel': {
          const channel = w.channels.get(message.runId);
          if (channel) return channel.events.frame(message.frame, true);
          // a frame of a run that just closed here crossed the run-close: nothing to do
          if (w.closedRuns.has(message.runId)) return;
          throw new LoraMeshError(
            ErrorCodes.STATE,
            `a frame for run ${cleanPeerText(message.runId, 64)}, not open here`,
          );
        }
        case 'worker-error':
          // outside a run's channel, only the pool's base can fail (a download, memory): the worker cannot serve
          this.expel(
            w,
            ErrorCodes.STATE,
            `the worker reported ${cleanPeerText(message.code, 64)}: ${cleanPeerText(message.message, 300)}`,
          );
          return;
        case 'heartbeat':
          return;
        default:
          throw new LoraMeshError(ErrorCodes.STATE, `a pool does not accept ${message.type} messages`);
      }
    } catch (err) {
      const code: ErrorCode = err instanceof LoraMeshError ? err.code : ErrorCodes.DECODE;
      const why = cleanPeerText((err as Error).message, 300);
      w.rejected++;
      this.log(`pool worker ${w.id}: rejected frame (${why})`);
      this.send(w, { type: 'reject', code, message: why });
      if (w.rejected >= this.limits.maxRejects) this.expel(w, ErrorCodes.QUARANTINED, `${w.rejected} rejected frames`);
    }
  }

  /** The pool checks what every run needs (protocol, the base's format); each run checks the rest itself. */
  private onHello(w: PoolWorker, hello: Hello): void {
    if (w.state !== 'handshake') throw new LoraMeshError(ErrorCodes.STATE, 'hello sent twice');
    const name = hello.name === undefined ? w.id : cleanPeerText(hello.name, 64);
    if (hello.protocol !== PROTOCOL_VERSION) {
      this.expel(
        w,
        ErrorCodes.PROTOCOL_VERSION,
        `protocol ${hello.protocol} is not supported; this pool speaks ${PROTOCOL_VERSION}`,
      );
      return;
    }
    const refusal = baseFormatRefusal(this.options.manifest, hello, "this pool's");
    if (refusal) {
      this.expel(w, ErrorCodes.CODEC, refusal);
      return;
    }
    Object.assign(w, {
      name,
      backend: cleanPeerText(hello.backend, 32),
      platform: cleanPeerText(hello.platform, 16),
      adapter: cleanPeerText(hello.adapter ?? '', 120),
      slow: !!hello.slow,
      arithmetic: (hello.arithmetic ?? [DEFAULT_ARITHMETIC]).map((v) => cleanPeerText(v, 20)),
      offered: Math.max(1, hello.multiRun ?? 1),
      state: 'loading',
    });
    this.log(`pool worker ${w.id} (${w.name}, ${w.platform}/${w.backend}) joined; loading the base`);
    this.send(w, { type: 'pool-welcome', workerId: w.id, manifest: this.options.manifest });
  }

  /** Offers run `lane` to worker `w`: the run's mesh sees a new connection, whose hello the worker sends. */
  private openChannel(w: PoolWorker, lane: Lane): void {
    if (!lane.mesh || w.closed || w.channels.has(lane.id) || w.closedRuns.has(lane.id)) return;
    const runId = lane.id;
    const channel: RunChannel = { lane, open: true } as RunChannel;
    channel.peer = {
      // backpressure is the connection's, shared by every run on it: the pool applies it (dispatch, send)
      bufferedAmount: 0,
      get open() {
        return channel.open && w.peer.open;
      },
      send: (frame) => {
        if (channel.open) this.send(w, { type: 'channel', runId, frame });
      },
      // The run closes its connection. A refusal that retrying cannot change (codec, arithmetic, memory, a
      // quarantine) closes the run on this worker for good; a worker the run convicted after it joined (a
      // failed check, a flood) leaves the pool; anything else (a handshake that timed out while this process
      // was busy) is offered again.
      close: (_code, reason) => {
        const joined = lane.mesh?.stateOf(channel.peer) !== 'handshake';
        const convicted = reason === ErrorCodes.QUARANTINED && joined;
        this.closeChannel(w, runId, reason, PERMANENT_REFUSALS.has(reason), convicted, channel);
      },
      // (a run terminates a connection it closed a second later: by then this channel may have been replaced)
      terminate: () => this.closeChannel(w, runId, 'dropped by the run', false, false, channel),
      ping: () => {},
    };
    this.channelOf.set(channel.peer, { worker: w, runId });
    w.channels.set(runId, channel);
    channel.events = lane.mesh.attach(channel.peer);
    this.send(w, { type: 'run-open', runId });
  }

  private closeChannel(
    w: PoolWorker,
    runId: string,
    reason: string,
    permanent: boolean,
    convicted: boolean,
    which?: RunChannel,
  ): void {
    const channel = w.channels.get(runId);
    if (!channel?.open || (which && channel !== which)) return;
    channel.open = false;
    w.channels.delete(runId);
    w.busy.delete(runId);
    this.send(w, { type: 'run-close', runId, reason: cleanPeerText(reason, 200) });
    if (permanent) w.closedRuns.add(runId);
    else
      setTimeout(() => {
        const lane = this.lanes.get(runId);
        if (lane && !w.closed && w.state === 'ready') this.openChannel(w, lane);
      }, REOPEN_MS).unref();
    if (convicted) this.expel(w, ErrorCodes.QUARANTINED, `quarantined by run ${runId}`);
    // after the caller is done with the connection (as a socket's close event would come)
    queueMicrotask(() => {
      channel.events.close();
      this.channelOf.delete(channel.peer);
      this.wake();
    });
  }

  /** Tells the worker why (reject frame) and closes its connection: every run requeues what it held. */
  private expel(w: PoolWorker, code: ErrorCode, why: string): void {
    if (w.closed) return;
    w.closed = true;
    this.log(`pool worker ${w.id}: closed (${code}: ${why})`);
    this.send(w, { type: 'reject', code, message: why });
    w.peer.close(closeCodeFor(code), code);
    setTimeout(() => w.peer.terminate(), 1000).unref();
  }

  private onClose(w: PoolWorker): void {
    this.workers.delete(w.id);
    w.closed = true;
    for (const channel of w.channels.values()) {
      channel.open = false;
      channel.events.close();
      this.channelOf.delete(channel.peer);
    }
    w.channels.clear();
    this.log(`pool worker ${w.id} left`);
    this.wake();
  }

  private wake(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.dispatch();
    });
  }

  /**
   * A worker with a free slot gets the next micro-batch of the run the fair share picks among those with fresh
   * work (first attempts, retries), and so on while its slots last (a worker computes several runs' micro-batches
   * in one pass, at most one of each run). When the pick is a run the worker already holds, filling stops: the
   * next slot waits for the share's pick rather than going to a run the share would not pick, so weights hold.
   * An idle worker that got nothing fresh gets a straggler copy of the highest-priority run that has one.
   */
  private dispatch(): void {
    // runs with work waiting anywhere: the share's readiness (a worker's own candidates only filter its pick)
    const waiting = () => [...this.lanes.values()].filter((l) => l.mesh?.hasFreshWork).map((l) => l.id);
    for (const w of this.workers.values()) {
      if (w.state !== 'ready' || w.closed) continue;
      if (w.peer.bufferedAmount > this.buffer.soft) continue; // it has not taken what was sent: the tick retries
      const tried = new Set<string>();
      const slots = Math.min(w.offered, this.maxRunsPerWorker);
      while (w.busy.size < slots) {
        const candidates = [...w.channels]
          .filter(([runId, ch]) =>
            w.busy.has(runId) ? ch.lane.mesh?.hasFreshWork : !tried.has(runId) && ch.lane.mesh?.wants(ch.peer),
          )
          .map(([runId]) => runId);
        const runId = candidates.length > 0 ? this.share.pick(waiting(), candidates) : null;
        if (runId === null || w.busy.has(runId)) break;
        tried.add(runId);
        const channel = w.channels.get(runId)!;
        channel.lane.mesh!.offer(channel.peer, false);
      }
      if (w.busy.size > 0) continue;
      const byPriority = [...w.channels.values()].sort((a, b) => b.lane.priority - a.lane.priority);
      for (const channel of byPriority) if (channel.lane.mesh?.offer(channel.peer, true)) break;
    }
  }

  private send(w: PoolWorker, message: CoordinatorMessage): void {
    if (!w.peer.open) return;
    if (w.peer.bufferedAmount > this.buffer.hard) {
      this.log(`pool worker ${w.id}: ${w.peer.bufferedAmount} bytes unsent; dropping it`);
      w.peer.terminate();
      return;
    }
    const frame = encodeMessage(message);
    const wire = wsFrameBytes(frame.length, false);
    w.bytesOut += wire;
    this.traffic.countOut(wire, 'other');
    w.peer.send(frame);
  }
}
