/**
 * Child process holding simulated workers for the scale benchmark: real WebSocket connections and
 * real protocol messages through the neutral WorkerSession, with the gradient computation replaced
 * (hooks.compute) by a sleep of known length that returns gradients of the right shapes. The base
 * model is never loaded. Driven by its parent over IPC (see SimWorkerPool in sim-pool.ts).
 */
import WebSocket from 'ws';
import { NODE_CLIENT } from '../../node/ws-client.ts';
import { runRelay, type RunningRelay } from '../../coordinator/relay/relay.ts';
import { WorkerSession, type WorkerHooks } from '../../shared/worker-loop.ts';
import { asBytes, decodeMessage } from '../../shared/protocol/codec.ts';
import { tokenCount, type MicroBatch } from '../../shared/train/micro-batch.ts';
import type { GradientResult } from '../../shared/train/gradients.ts';

/** parent → child */
export type SimCommand =
  | { type: 'connect'; url: string; sessions: number; computeMs: number; namePrefix: string }
  /** start `relays` relays on `url` (a root taking relays with `token`), each with `sessions` simulated workers */
  | {
      type: 'relay';
      url: string;
      token: string;
      relays: number;
      sessions: number;
      computeMs: number;
      namePrefix: string;
    }
  | { type: 'cpu' }
  /** post the next result frame a session sends (the aggregation benchmark decodes real frames) */
  | { type: 'capture' };

/** child → parent */
export type SimReply =
  | { type: 'cpu'; userUs: number; systemUs: number; rssBytes: number }
  | { type: 'frame'; bytes: Uint8Array }
  | { type: 'error'; message: string };

type Assignment = Parameters<NonNullable<WorkerHooks['compute']>>[0];

const reply = (m: SimReply) => process.send!(m);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One gradient buffer per tensor name, shared by every session of this process (they are only read). */
const gradientBuffers = new Map<string, Float32Array>();
function gradientsLike(adapter: ReadonlyMap<string, Float32Array>): Map<string, Float32Array> {
  const grads = new Map<string, Float32Array>();
  for (const [name, values] of adapter) {
    let g = gradientBuffers.get(name);
    if (!g || g.length !== values.length) {
      // Small finite values of both signs: the coordinator refuses non-finite gradients.
      g = new Float32Array(values.length);
      for (let i = 0; i < g.length; i++) g[i] = (((Math.imul(i, 2654435761) >>> 0) % 2001) - 1000) * 1e-6;
      gradientBuffers.set(name, g);
    }
    grads.set(name, g);
  }
  return grads;
}

/** Token count of an assignment, whatever its kind: the coordinator checks it. */
function assignmentTokens(a: Assignment): number {
  // local-steps jobs carry several micro-batches
  const batches: MicroBatch[] =
    'microBatches' in a ? (a as { microBatches: MicroBatch[] }).microBatches : [a.microBatch];
  return batches.reduce((n, mb) => n + tokenCount(mb), 0);
}

let captureNext = false;
const relays: RunningRelay[] = [];

function startSession(url: string, name: string, computeMs: number): void {
  const session = new WorkerSession(
    {
      backend: 'simulated',
      platform: 'node',
      loadBase: () => Promise.reject(new Error('simulated workers never load the base model')),
      log: () => {},
    },
    {
      name,
      hooks: {
        compute: async (a, adapter): Promise<GradientResult> => {
          await sleep(computeMs);
          return { lossSum: 1, tokenCount: assignmentTokens(a), grads: gradientsLike(adapter) };
        },
      },
    },
  );
  const connect = (at: string) => {
    const ws = new WebSocket(at, NODE_CLIENT);
    ws.on('open', () => ws.send(session.hello()));
    ws.on('message', (data) => {
      void session
        .receive(asBytes(data as Buffer), (frame) => {
          if (captureNext && decodeMessage(frame).type === 'result') {
            captureNext = false;
            reply({ type: 'frame', bytes: frame });
          }
          if (ws.readyState === ws.OPEN) ws.send(frame);
        })
        .then(() => {
          if (session.finished) ws.close(1000, 'done');
        });
    });
    // sent to one of the coordinator's ingestion threads: join there
    ws.on('close', () => {
      const next = session.redirect;
      session.redirect = null;
      if (next && !session.finished) connect(next);
    });
    ws.on('error', (err) => reply({ type: 'error', message: `${name}: ${err.message}` }));
  };
  connect(url);
}

process.on('message', (cmd: SimCommand) => {
  switch (cmd.type) {
    case 'connect':
      for (let i = 0; i < cmd.sessions; i++) startSession(cmd.url, `${cmd.namePrefix}-${i}`, cmd.computeMs);
      return;
    case 'relay':
      for (let r = 0; r < cmd.relays; r++) {
        const relay = runRelay({
          parent: cmd.url,
          token: cmd.token,
          host: '127.0.0.1',
          port: 0,
          name: `${cmd.namePrefix}-relay${r}`,
          heartbeatMs: 30_000,
          // every simulated worker comes from 127.0.0.1
          limits: { maxWorkersPerAddress: cmd.sessions + 16, maxConnectionsPerAddress: cmd.sessions + 64 },
          log: () => {},
        });
        relays.push(relay);
        relay.ready.then(
          (url) => {
            for (let i = 0; i < cmd.sessions; i++) startSession(url, `${cmd.namePrefix}-relay${r}-${i}`, cmd.computeMs);
          },
          (err: Error) => reply({ type: 'error', message: `relay ${r}: ${err.message}` }),
        );
      }
      return;
    case 'cpu': {
      const { user, system } = process.cpuUsage();
      reply({ type: 'cpu', userUs: user, systemUs: system, rssBytes: process.memoryUsage.rss() });
      return;
    }
    case 'capture':
      captureNext = true;
      return;
  }
});
// The IPC channel closes when the parent exits (even by SIGKILL): leave with it.
process.on('disconnect', () => process.exit(0));
