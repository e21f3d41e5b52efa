/**
 * Ingestion threads (issue 19, docs/SCALE.md): `--ingest-threads N` moves the per-worker socket work of a run off
 * the coordinator's main thread. Each thread is a relay (relay.ts) in a worker_thread of this process, with a
 * server on its own port (Node 20 cannot hand an accepted socket to a thread); the main thread's mesh answers a
 * worker's hello with `redirect` to one of them, and keeps only the relays' block sums, the schedule, the checks
 * that need the trusted model, and the optimizer. With the run's reduction block the sum is the flat run's, bit for
 * bit. The thread's workers fall back to the coordinator's own socket, which sends them to a thread again.
 */
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import { cliThreadEntry } from '../../node/package-root.ts';
import { threadCpuNs } from '../../node/thread-cpu.ts';
import { ErrorCodes, LoraMeshError } from '../../shared/errors.ts';
import type { Peer, PeerEvents } from '../engine/peer.ts';
import type { NetLimits } from '../net/net-limits.ts';

/** What a thread is started with (workerData of the hidden `ingest-thread` command: plain data only). */
export interface IngestThreadData {
  loramesh: 'ingest-thread';
  index: number;
  /** the coordinator's own socket (named to its workers as the place to fall back to) */
  parent: string;
  /** the thread's link to the coordinator's mesh: frames cross by postMessage, no socket */
  port?: MessagePort;
  host: string;
  /** the first thread's port (the next ones follow it); 0: each picks a free one */
  firstPort: number;
  workerToken?: string;
  /** the coordinator's port and scheme, for its workers' fallback URL (the host they reached the thread by) */
  rootPort: number;
  secure: boolean;
  tls?: { cert: string; key: string };
  allowedOrigins?: string[];
  limits?: Partial<NetLimits>;
  heartbeatMs: number;
}

/** thread → main */
export type IngestThreadReply =
  | { type: 'ready'; port: number }
  | { type: 'log'; line: string }
  | { type: 'cpu'; ns: number }
  /** the run is over; `ns` as in cpu */
  | { type: 'finished'; ns: number }
  | { type: 'failed'; message: string };

export interface IngestThread {
  index: number;
  port: number;
  /** nanoseconds this thread has run on a CPU (its /proc/thread-self/schedstat) */
  cpuNs(): Promise<number>;
  /** waits (at most 2 s) for the thread to pass the run's end on to its workers, then stops it */
  close(): Promise<void>;
}

/** The URL a worker that reached this machine as `hostname` uses for a thread on `port`. */
export function threadUrl(hostname: string, port: number, secure: boolean): string {
  return `ws${secure ? 's' : ''}://${hostname.includes(':') ? `[${hostname}]` : hostname}:${port}/ws`;
}

/** A worker's fallback from a thread: the coordinator's own socket as the worker reached the thread. */
export function rootFallback(data: IngestThreadData): (peer: Peer) => string[] {
  return (peer) => [threadUrl(peer.hostname ?? data.host, data.rootPort, data.secure)];
}

/**
 * Sends a frame across threads: one copy into a buffer of its own, which is then moved, not copied again.
 * (Structured clone would copy a view's whole backing buffer: an encoder's pooled one, or ws's.)
 */
export function postFrame(port: MessagePort, frame: Uint8Array): void {
  const own = new Uint8Array(frame); // a copy (Buffer.slice would be a view of the same memory)
  port.postMessage(own, [own.buffer]);
}

/**
 * A MessagePort as one of the mesh's peers: a relay, trusted as this process's own thread (no token, no socket).
 * Frames are copied across (a parameter frame is shared by every peer, so it is not transferred).
 */
export function attachPort(edge: { attach(peer: Peer): PeerEvents }, port: MessagePort): void {
  let open = true;
  let events: PeerEvents | null = null;
  const peer: Peer = {
    relay: true,
    bufferedAmount: 0,
    get open() {
      return open;
    },
    send: (frame) => postFrame(port, frame),
    close: () => port.close(),
    terminate: () => port.close(),
    ping: () => queueMicrotask(() => events?.pong()),
  };
  events = edge.attach(peer);
  port.on('message', (data: Uint8Array) => events?.frame(data, true));
  port.on('close', () => {
    open = false;
    events?.close();
  });
}

export async function startIngestThreads(
  count: number,
  base: Omit<IngestThreadData, 'loramesh' | 'index' | 'port'>,
  edge: { attach(peer: Peer): PeerEvents },
  log: (line: string) => void,
): Promise<IngestThread[]> {
  const { entry, eval: isScript } = cliThreadEntry();
  return Promise.all(
    Array.from({ length: count }, (_, index) => {
      const { port1, port2 } = new MessageChannel();
      const data: IngestThreadData = { loramesh: 'ingest-thread', index, ...base, port: port2 };
      const worker = new Worker(entry, {
        eval: isScript,
        argv: ['ingest-thread'],
        workerData: data,
        transferList: [port2],
      });
      attachPort(edge, port1);
      const cpuWaiters: ((ns: number) => void)[] = [];
      let markFinished = () => {};
      /** the thread's CPU when it finished: the answer to a question it was stopped before answering */
      let lastNs = Number.NaN;
      let exited = false;
      const answerAll = () => {
        for (const r of cpuWaiters.splice(0)) r(lastNs);
      };
      const finished = new Promise<void>((r) => (markFinished = r));
      return new Promise<IngestThread>((resolve, reject) => {
        worker.on('message', (m: IngestThreadReply) => {
          if (m.type === 'log') log(`ingest ${index}: ${m.line}`);
          else if (m.type === 'finished') {
            lastNs = m.ns;
            markFinished();
          } else if (m.type === 'cpu') cpuWaiters.shift()?.(m.ns);
          else if (m.type === 'failed') reject(new Error(`ingestion thread ${index}: ${m.message}`));
          else if (m.type === 'ready')
            resolve({
              index,
              port: m.port,
              cpuNs: () =>
                new Promise((r) => {
                  if (exited) return r(lastNs);
                  cpuWaiters.push(r);
                  worker.postMessage({ type: 'cpu' });
                }),
              close: async () => {
                const timer = new Promise((r) => setTimeout(r, 2000).unref());
                await Promise.race([finished, timer]);
                await worker.terminate();
              },
            });
        });
        worker.once('error', (err) => reject(err));
        worker.once('exit', (code) => {
          exited = true;
          answerAll();
          reject(new Error(`ingestion thread ${index} exited (${code})`));
        });
      });
    }),
  );
}

/** The body of an ingestion thread (the hidden `ingest-thread` command, run by startIngestThreads). */
export async function runIngestThread(): Promise<void> {
  const { workerData, parentPort, isMainThread } = await import('node:worker_threads');
  const data = workerData as IngestThreadData | undefined;
  if (isMainThread || !parentPort || data?.loramesh !== 'ingest-thread')
    throw new LoraMeshError(ErrorCodes.CONFIG, 'ingest-thread runs inside a coordinator (train --ingest-threads N)');
  const post = (m: IngestThreadReply) => parentPort.postMessage(m);
  const { runRelay } = await import('./relay.ts');
  const relay = runRelay({
    parent: data.parent,
    parentPort: data.port,
    host: data.host,
    port: data.firstPort === 0 ? 0 : data.firstPort + data.index,
    workerToken: data.workerToken,
    workerFallback: rootFallback(data),
    tls: data.tls,
    allowedOrigins: data.allowedOrigins,
    limits: data.limits,
    heartbeatMs: data.heartbeatMs,
    name: `ingest-${data.index}`,
    log: (line) => post({ type: 'log', line }),
  });
  parentPort.on('message', (m: { type: string }) => {
    if (m.type === 'cpu') post({ type: 'cpu', ns: threadCpuNs() });
  });
  try {
    post({ type: 'ready', port: Number(new URL(await relay.ready).port) });
    await relay.finished;
    post({ type: 'finished', ns: threadCpuNs() });
  } catch (err) {
    post({ type: 'failed', message: (err as Error).message });
  }
}
