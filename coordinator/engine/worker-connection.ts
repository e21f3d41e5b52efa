/**
 * What the mesh keeps per connection: the public figures the dashboard shows (WorkerInfo), and
 * the private state beside them (the socket, the attempt it holds, liveness, rate limit, offences,
 * checks). A connection starts in handshake; mesh.ts moves it through loading to ready.
 */
import { nanoid } from 'nanoid';
import type { Peer } from './peer.ts';
import type { CheckedWorker } from './result-gate.ts';
import type { Holding } from './step-in-flight.ts';
import { TokenBucket } from './token-bucket.ts';

export interface WorkerInfo {
  id: string;
  name: string;
  backend: string;
  platform: string;
  /** device behind the backend, when the worker reports it */
  adapter: string;
  /** running on a slow fallback backend */
  slow: boolean;
  /** the arithmetic variants the worker's kernels can run, from its hello (shared/arithmetic.ts) */
  arithmetic: string[];
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

export interface WorkerConnection extends WorkerInfo, CheckedWorker {
  ws: Peer;
  holding: Holding | null;
  alive: boolean;
  /** rate limiter state */
  bucket: TokenBucket;
  /** closed for an offence; its frames are ignored */
  quarantined: boolean;
  /** offences that are not rejected frames (worker-errors for held work); each used result takes one away */
  strikes: number;
  /** a relay's: how many micro-batches its ready workers take at once (null: not a relay) */
  relayCapacity: number | null;
}

/** A new connection, not yet said hello, allowed `messagesPerSecond` frames per second. */
export function newConnection(ws: Peer, messagesPerSecond: number): WorkerConnection {
  return {
    id: nanoid(10),
    name: '',
    backend: '',
    platform: '',
    adapter: '',
    slow: false,
    arithmetic: [],
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
    bucket: new TokenBucket(messagesPerSecond),
    quarantined: false,
    strikes: 0,
    relayCapacity: null,
    checksPassed: 0,
    checksPending: 0,
  };
}

/** The public figures of a connection (a copy): what the dashboard and the run summary see. */
export function workerInfo({
  ws: _ws,
  holding: _h,
  alive: _alive,
  bucket: _b,
  quarantined: _q,
  strikes: _s,
  relayCapacity: _rc,
  checksPassed: _cp,
  checksPending: _cq,
  ...info
}: WorkerConnection): WorkerInfo {
  return info;
}
