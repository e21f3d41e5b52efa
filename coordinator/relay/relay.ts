/**
 * `loramesh relay ws://PARENT/ws`: a worker to its parent and a coordinator to its own workers (docs/SCALE.md).
 *
 * - Upstream it says hello as a relay (the upgrade carries `X-Loramesh-Role: relay` and the relay token), takes
 *   whole reduction blocks (`assign-blocks`) and answers each with the in-order sum of its results (`block-result`):
 *   one frame per block instead of one per micro-batch, so the parent's work no longer grows with the workers
 *   behind it.
 * - Downstream it runs a MeshExecutor like a run's, with the run's manifest: the same handshake checks, limits,
 *   rejects, result checks (codec, shape, finiteness, overflow bound) and scheduling. Its workers fetch the base
 *   through it (/files/ is passed through from the parent; they verify every byte's sha256 themselves).
 * - The parent's checks see through it: the results the parent picked for spot checks (its secret, told only to
 *   the trusted relay) and those over its outlier bound go up whole, with who computed each micro-batch, so the
 *   parent recomputes them and convicts a lying worker by name (`expel`).
 * - Parameters go down as the parent's own frames, so every worker holds the parent's bits.
 *
 * If the parent goes away the relay's in-flight blocks are lost there (the parent hands them out again) and the
 * relay reconnects. Its workers' welcome lists the parent (and --fallback URLs) to connect to if the relay dies.
 */
import { Readable } from 'node:stream';
import type { MessagePort } from 'node:worker_threads';
import WebSocket from 'ws';
import { NODE_CLIENT } from '../../node/ws-client.ts';
import { ARITHMETIC_VARIANTS } from '../../shared/arithmetic.ts';
import { ErrorCodes, LoraMeshError } from '../../shared/errors.ts';
import { adapterParameterCount } from '../../shared/lora/adapter.ts';
import { asBytes, decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import {
  flattenTensors,
  PROTOCOL_VERSION,
  RELAY_PROTOCOL,
  unpackFloats,
  type AssignBlocks,
  type BlockItem,
  type Params,
  type RelayPolicy,
  type RunManifest,
  type WorkerMessage,
} from '../../shared/protocol/messages.ts';
import { cleanPeerText } from '../../shared/protocol/peer-text.ts';
import { reconnectDelayMs } from '../../shared/protocol/reconnect.ts';
import { CODECS, encodeFloats, F32, payloadBytes } from '../../shared/protocol/wire-codec.ts';
import { BASE_FORMATS } from '../../shared/quant/formats.ts';
import { outliers, type NormHistory, type ScreenedResult } from '../engine/defence.ts';
import { MeshExecutor, type SecurityLimits } from '../engine/mesh.ts';
import { memoryCheckFrom } from '../engine/worker-policy.ts';
import type { Peer } from '../engine/peer.ts';
import type { NetLimits } from '../net/net-limits.ts';
import { startServer, type RunningServer } from '../net/server.ts';
import { postFrame } from './ingest.ts';
import { ProbationTally } from './probation.ts';

export interface RelayOptions {
  /** the parent's worker socket, ws(s)://HOST:PORT/ws (a root coordinator or another relay) */
  parent: string;
  /** the relay token the parent asks (its --relay-token) */
  token?: string;
  host: string;
  /** 0: pick a free one */
  port: number;
  /** the join token this relay's workers present (default: none) */
  workerToken?: string;
  /** more URLs for this relay's workers to fall back to, before the parent */
  fallback?: string[];
  /** instead: a worker's fallback list from its connection (an ingestion thread: the root as the worker sees it) */
  workerFallback?: (peer: Peer) => string[];
  /** https + wss for its workers with these PEM files */
  tls?: { cert: string; key: string };
  /** Origin values allowed to open its worker socket (browser pages); undefined: any */
  allowedOrigins?: string[];
  /**
   * the parent over a MessagePort instead of a socket (an ingestion thread and its coordinator: frames cross by
   * postMessage, no socket, no framing); `parent` then names the parent only for its workers' fallback
   */
  parentPort?: MessagePort;
  name?: string;
  heartbeatMs?: number;
  limits?: Partial<NetLimits>;
  security?: Partial<SecurityLimits>;
  log?: (line: string) => void;
}

export interface RunningRelay {
  /** this relay's worker socket, once the parent's welcome came (workers join here) */
  ready: Promise<string>;
  /** resolves when the run is done (the parent's done), rejects when the parent refuses the relay */
  finished: Promise<string>;
  close(): Promise<void>;
}

const RELAY_PROBLEM_CODES = new Set<string>([ErrorCodes.AUTH, ErrorCodes.PROTOCOL_VERSION, ErrorCodes.QUARANTINED]);

export function runRelay(opts: RelayOptions): RunningRelay {
  const log = opts.log ?? ((line: string) => console.log(`[relay] ${line}`));
  const parentHttp = opts.parent.replace(/^ws/, 'http').replace(/\/ws$/, '');
  let mesh: MeshExecutor | null = null;
  let manifest: RunManifest | null = null;
  let server: RunningServer | null = null;
  /** the link to the parent: a WebSocket, or a MessagePort (opts.parentPort) */
  let link: { send(bytes: Uint8Array): void; open(): boolean; close(): void } | null = null;
  let closed = false;
  /** what the parent's parameter frames brought this relay to (its workers hold the same) */
  let held: Float32Array | null = null;
  let paramVersion = -1;
  /** the relay's own step numbers for its workers (a parent step may come in several assignments) */
  let localStep = 0;
  /** results sent up whole per worker (the parent's probation), counted once the parent has read them */
  const probation = new ProbationTally();
  let capacitySent = -1;
  /** its workers' traffic already reported to the parent (each block-result carries what came since) */
  let reported = { bytesIn: 0, bytesOut: 0 };
  let settle: { resolve: (url: string) => void; reject: (err: Error) => void };
  const ready = new Promise<string>((resolve, reject) => (settle = { resolve, reject }));
  let finish: { resolve: (why: string) => void; reject: (err: Error) => void };
  const finished = new Promise<string>((resolve, reject) => (finish = { resolve, reject }));
  ready.catch(() => {});

  const send = (m: WorkerMessage) => {
    if (link?.open()) link.send(encodeMessage(m));
  };
  const hello = (): WorkerMessage => ({
    type: 'hello',
    protocol: PROTOCOL_VERSION,
    name: opts.name,
    backend: 'relay',
    platform: 'node',
    codecs: [...CODECS],
    baseFormats: [...BASE_FORMATS],
    arithmetic: [...ARITHMETIC_VARIANTS],
    relay: true,
    relayProtocol: RELAY_PROTOCOL,
  });
  // one frame at a time, in order: a block's compute must not overtake the parameters sent before it
  let queue = Promise.resolve();
  const receive = (bytes: Uint8Array) => {
    // an expel is acted on at once: the worker must not compute the next blocks while one is summed
    if (bytes.length < 4096) {
      try {
        const m = decodeMessage(bytes);
        if (m.type === 'expel') {
          if (mesh?.expel(m.worker, `the parent: ${cleanPeerText(m.reason, 300)}`))
            log(`expelled worker ${cleanPeerText(m.worker, 64)} at the parent's word`);
          return;
        }
      } catch {
        // onFrame reports it in order
      }
    }
    queue = queue.then(() => onFrame(bytes)).catch(() => {});
  };

  // Capacity follows the workers: the parent hands out as many blocks as they can compute at once.
  const capacityTimer = setInterval(() => {
    if (!mesh || !link?.open()) return;
    const n = mesh.readyCount();
    if (n === capacitySent) return;
    capacitySent = n;
    send({ type: 'capacity', microBatches: n });
  }, 100);

  async function onWelcome(m: RunManifest, policy: RelayPolicy = {}): Promise<void> {
    if (manifest && manifest.runId !== m.runId) throw new LoraMeshError(ErrorCodes.STATE, 'the parent switched runs');
    if (!mesh) {
      manifest = m;
      // the run's policy for its workers, as at the root (this relay's own security options first)
      const table = policy.memory;
      mesh = new MeshExecutor({
        manifest: m,
        log: (line) => log(line),
        security: { ...policy.security, ...opts.security },
        ...(policy.schedule ? { schedule: policy.schedule } : {}),
        ...(policy.recompute ? { recompute: true } : {}),
        ...(table ? { memoryCheck: memoryCheckFrom((kernels) => table[kernels]) } : {}),
        fallback: opts.workerFallback ?? [...(opts.fallback ?? []), opts.parent],
      });
      const values = adapterParameterCount(m.adapter);
      try {
        server = await startServer({
          host: opts.host,
          port: opts.port,
          files: [],
          mesh,
          // a result frame is the largest a worker sends
          maxPayload: 4 * values + 64 * 1024 + 16 * m.adapter.length * 64,
          heartbeatMs: opts.heartbeatMs ?? 5000,
          token: opts.workerToken,
          limits: opts.limits,
          tls: opts.tls,
          allowedOrigins: opts.allowedOrigins,
          routes: (req, res) => passFile(req.url ?? '', parentHttp, res, log),
          monitor: {
            log,
            subscribe: () => () => {},
            snapshot: () => ({ relay: opts.name ?? null, parent: opts.parent, workers: mesh?.info() ?? [] }),
          },
        });
      } catch (err) {
        // it cannot serve (its port is taken): the run goes on without it, and whoever started it is told
        settle.reject(err as Error);
        finish.reject(err as Error);
        finishedRun = true;
        link?.close();
        throw err;
      }
      log(`serving run ${m.runId} to workers at ${server.wsUrl}`);
      settle.resolve(server.wsUrl);
    }
    capacitySent = -1;
    send({ type: 'ready', paramVersion });
  }

  function onParams(m: Params): void {
    if (!manifest || !mesh) throw new LoraMeshError(ErrorCodes.STATE, 'params before welcome');
    const values = adapterParameterCount(manifest.adapter);
    const codec = m.deltaFrom === undefined ? F32 : manifest.wire.down;
    const decoded = unpackFloats(m.tensors, codec, values, 'params.tensors');
    if (m.deltaFrom === undefined) held = new Float32Array(decoded);
    else {
      if (!held || m.deltaFrom !== paramVersion)
        throw new LoraMeshError(ErrorCodes.STALE, `params delta from ${m.deltaFrom}, the relay holds ${paramVersion}`);
      for (let i = 0; i < decoded.length; i++) held[i] += decoded[i];
    }
    paramVersion = m.paramVersion;
    probation.read(m.paramVersion);
    mesh.forwardParams(m.paramVersion, encodeMessage(m), payloadBytes(m.tensors), held);
  }

  const packF32 = (grads: Map<string, Float32Array>) => encodeFloats(flattenTensors(grads, manifest!.adapter), F32);

  async function onAssign(a: AssignBlocks): Promise<void> {
    if (!manifest || !mesh) throw new LoraMeshError(ErrorCodes.STATE, 'assign-blocks before welcome');
    const blocks = [...a.blocks].sort((x, y) => x.block - y.block);
    const microBatches = blocks.flatMap((b) => b.microBatches);
    // the global index of each local one: blocks are whole (only the step's last may be shorter, and it sorts last)
    const indices = blocks.flatMap((b) => b.microBatches.map((_, j) => b.block * a.blockSize + j));
    const {
      results,
      blocks: sums,
      ledger,
      norms,
    } = await mesh.computeBlocks(localStep++, a.paramVersion, microBatches, a.blockSize, a.slots);
    const items: BlockItem[] = results.map((r, k) => {
      const workerId = ledger[k].usedWorker ?? '';
      return {
        index: indices[k],
        worker: workerId,
        name: mesh!.workers.get(workerId)?.name ?? workerId,
        lossSum: r.lossSum,
        tokenCount: r.tokenCount,
        norm: norms[k],
      };
    });
    const forward = new Set(a.forward);
    for (const k of screen(items, a)) forward.add(items[k].index);
    if (a.probation)
      for (const item of items) {
        if (probation.count(item.worker) < a.probation) forward.add(item.index);
      }
    for (const index of forward) {
      const worker = items[indices.indexOf(index)]?.worker;
      if (worker !== undefined) probation.send(worker, a.paramVersion);
    }
    const traffic = { bytesIn: mesh.bytesIn - reported.bytesIn, bytesOut: mesh.bytesOut - reported.bytesOut };
    reported = { bytesIn: mesh.bytesIn, bytesOut: mesh.bytesOut };
    // One frame per block sum and per result sent up whole, then the block-result that closes the answer: no frame
    // is larger than one result, however many blocks and results go up (the parent's relay frame limit).
    const { assignmentId } = a;
    blocks.forEach((b, k) => {
      const { lossSum, tokenCount, grads } = sums[k];
      send({ type: 'block-sum', assignmentId, block: b.block, lossSum, tokenCount, grads: packF32(grads) });
    });
    for (const index of forward) {
      const k = indices.indexOf(index);
      if (k >= 0) send({ type: 'block-forward', assignmentId, index, grads: packF32(results[k].grads) });
    }
    send({ type: 'block-result', traffic, assignmentId, paramVersion: a.paramVersion, items });
  }

  function connect(failures: number): void {
    if (closed) return;
    const headers: Record<string, string> = { 'x-loramesh-role': 'relay' };
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    const socket = new WebSocket(opts.parent, { ...NODE_CLIENT, headers });
    link = {
      send: (bytes) => socket.send(bytes),
      open: () => socket.readyState === WebSocket.OPEN,
      close: () => socket.terminate(),
    };
    let opened = false;
    let refused: Error | null = null;
    socket.on('open', () => {
      opened = true;
      send(hello());
    });
    socket.on('unexpected-response', (_req, res) => {
      const code = String(res.headers['x-loramesh-error'] ?? '');
      refused = new LoraMeshError(
        code === ErrorCodes.AUTH ? ErrorCodes.AUTH : ErrorCodes.STATE,
        `the parent refused this relay: HTTP ${res.statusCode} ${cleanPeerText(code, 40)}`,
      );
      socket.terminate();
    });
    socket.on('message', (data) => receive(asBytes(data as Buffer)));
    socket.on('error', (err) => log(`parent connection: ${err.message}`));
    socket.on('close', () => {
      probation.linkLost();
      mesh?.abort(new Error('the parent connection closed'));
      if (closed || finishedRun) return;
      if (refused) {
        settle.reject(refused);
        finish.reject(refused);
        return;
      }
      const next = opened ? 0 : failures + 1;
      const delay = reconnectDelayMs(next, Math.random());
      log(`parent connection closed; reconnecting in ${(delay / 1000).toFixed(1)} s`);
      setTimeout(() => connect(next), delay).unref();
    });
  }

  let finishedRun = false;
  async function onFrame(bytes: Uint8Array): Promise<void> {
    let m: ReturnType<typeof decodeMessage>;
    try {
      m = decodeMessage(bytes);
    } catch (err) {
      log(`a frame from the parent does not decode: ${cleanPeerText((err as Error).message, 200)}`);
      return;
    }
    try {
      switch (m.type) {
        case 'welcome':
          if (m.relayProtocol !== RELAY_PROTOCOL) {
            // an answer in a form the parent does not read would be refused at every step: stop, and say why
            const err = new LoraMeshError(
              ErrorCodes.PROTOCOL_VERSION,
              `the parent speaks relay protocol ${m.relayProtocol ?? 'none (a parent from before relay protocol numbers)'}, this relay ` +
                `${RELAY_PROTOCOL}: upgrade the relays and the coordinator together`,
            );
            log(`${err.code}: ${err.message}`);
            settle.reject(err);
            finish.reject(err);
            finishedRun = true;
            link?.close();
            return;
          }
          return await onWelcome(m.manifest, m.relayPolicy);
        case 'params':
          return onParams(m);
        case 'assign-blocks':
          return await onAssign(m);
        case 'reject':
          log(`the parent rejected a frame: ${m.code}: ${cleanPeerText(m.message, 300)}`);
          if (RELAY_PROBLEM_CODES.has(m.code)) {
            const err = new LoraMeshError(m.code as typeof ErrorCodes.AUTH, cleanPeerText(m.message, 300));
            settle.reject(err);
            finish.reject(err);
            finishedRun = true;
          }
          return;
        case 'done':
          finishedRun = true;
          mesh?.finish(m.reason);
          log(`run done: ${cleanPeerText(m.reason, 200)}`);
          finish.resolve(m.reason);
          return;
        default:
          log(`the parent sent ${m.type}, which a relay does not take`);
      }
    } catch (err) {
      const code = err instanceof LoraMeshError ? err.code : ErrorCodes.STATE;
      log(`${code}: ${(err as Error).message}`);
      if (m.type === 'assign-blocks')
        send({ type: 'worker-error', assignmentId: m.assignmentId, code, message: (err as Error).message });
    }
  }

  if (opts.parentPort) {
    const port = opts.parentPort;
    let open = true;
    link = { send: (bytes) => postFrame(port, bytes), open: () => open, close: () => port.close() };
    port.on('message', (data: Uint8Array) => receive(data));
    port.on('close', () => {
      open = false;
      mesh?.abort(new Error('the parent closed the link'));
    });
    send(hello());
  } else connect(0);
  return {
    ready,
    finished,
    async close() {
      closed = true;
      clearInterval(capacityTimer);
      link?.close();
      mesh?.close();
      await server?.close();
    },
  };
}

/**
 * The parent's outlier screen on this relay's results (defence.ts outliers(), against the parent's trusted
 * reference when it has one): the local indices to send up whole.
 */
function screen(items: BlockItem[], a: AssignBlocks): number[] {
  if (!a.outlier) return [];
  const reference = a.outlier.reference;
  const history = { reference: () => reference ?? null } as unknown as NormHistory;
  const screened: ScreenedResult[] = items.map((item, k) => ({
    index: k,
    workerId: item.worker,
    norm: item.norm,
    verified: false,
  }));
  return outliers(screened, a.outlier.factor, reference === undefined ? null : history);
}

/** /files/<sha256> passed through from the parent (content-addressed: the worker verifies what it gets). */
function passFile(
  url: string,
  parentHttp: string,
  res: import('node:http').ServerResponse,
  log: (line: string) => void,
): boolean {
  const file = /^\/files\/([0-9a-f]{64})$/.exec(new URL(url, 'http://x').pathname);
  if (!file) return false;
  fetch(`${parentHttp}/files/${file[1]}`)
    .then((upstream) => {
      res.writeHead(upstream.status, {
        'content-type': 'application/octet-stream',
        ...(upstream.headers.get('content-length')
          ? { 'content-length': upstream.headers.get('content-length')! }
          : {}),
      });
      if (!upstream.body) return void res.end();
      Readable.fromWeb(upstream.body as import('node:stream/web').ReadableStream).pipe(res);
    })
    .catch((err: Error) => {
      log(`passing ${file[1].slice(0, 12)}… from the parent failed: ${err.message}`);
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end();
    });
  return true;
}
