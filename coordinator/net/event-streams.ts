/**
 * The /api/events publisher: Server-Sent Event streams with a global and a per-address cap, and a
 * bound on what each may hold unsent. A client that stops reading is dropped once its unsent bytes
 * would pass the bound, so a crowd of stalled readers costs at most cap × bound of memory. Events
 * are sent in batches, one write per stream per turn of the event loop: a burst of log lines (a
 * flood of rejected frames) costs one write per stream, not one per line and stream.
 */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { TLSSocket } from 'node:tls';
import { ErrorCodes } from '../../shared/errors.ts';
import { AddressCounter, type NetLimits } from './net-limits.ts';

type StreamLimits = Pick<NetLimits, 'maxEventStreams' | 'maxEventStreamsPerAddress' | 'maxEventStreamBufferBytes'>;

export class EventStreams {
  /** open streams → the client key they count under */
  private readonly streams = new Map<ServerResponse, string>();
  private readonly perAddress: AddressCounter;
  /** events not yet written, and their bytes */
  private pending: string[] = [];
  private pendingBytes = 0;
  private flushScheduled: NodeJS.Immediate | null = null;
  /** a batch is written at once when it grows past this, so a batch alone never passes the bound */
  private readonly maxBatchBytes: number;

  /** `log` gets one line per dropped stream; it may publish (the monitor turns log lines into events) */
  constructor(
    private readonly limits: StreamLimits,
    private readonly log: (line: string) => void,
  ) {
    this.perAddress = new AddressCounter(limits.maxEventStreamsPerAddress);
    this.maxBatchBytes = Math.min(64 * 1024, Math.floor(limits.maxEventStreamBufferBytes / 4));
  }

  get size(): number {
    return this.streams.size;
  }

  /** Starts a stream for `client` (a clientKey), or answers LM_ERR_LIMIT: 503 all streams taken, 429 this address's. */
  open(req: IncomingMessage, res: ServerResponse, client: string, headers: OutgoingHttpHeaders): void {
    if (this.streams.size >= this.limits.maxEventStreams) {
      return refuse(res, 503, `the coordinator serves at most ${this.limits.maxEventStreams} event streams`);
    }
    if (this.perAddress.atLimit(client)) {
      return refuse(res, 429, `at most ${this.limits.maxEventStreamsPerAddress} event streams per client address`);
    }
    const sse = { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' };
    res.writeHead(200, { ...sse, ...headers });
    res.write(': connected\n\n');
    this.streams.set(res, client);
    this.perAddress.add(client);
    res.on('close', () => this.forget(res));
    req.on('close', () => this.forget(res));
  }

  /** Queues one event for every stream; it is written at the end of this turn of the event loop. */
  publish(event: unknown): void {
    if (this.streams.size === 0) return;
    const data = `data: ${JSON.stringify(event)}\n\n`;
    this.pending.push(data);
    this.pendingBytes += Buffer.byteLength(data);
    if (this.pendingBytes >= this.maxBatchBytes) this.flush();
    else this.flushScheduled ??= setImmediate(() => this.flush());
  }

  /** Writes the queued events to every stream; drops the streams they would take past the unsent-bytes bound. */
  private flush(): void {
    if (this.flushScheduled) clearImmediate(this.flushScheduled);
    this.flushScheduled = null;
    if (this.pending.length === 0) return;
    const data = this.pending.join('');
    const bytes = this.pendingBytes;
    [this.pending, this.pendingBytes] = [[], 0];
    const stalled: { res: ServerResponse; client: string; unsent: number }[] = [];
    for (const [res, client] of this.streams) {
      const unsent = res.writableLength;
      if (unsent + bytes > this.limits.maxEventStreamBufferBytes) stalled.push({ res, client, unsent });
      else res.write(data);
    }
    // Forget them before logging: the log line is itself an event.
    for (const { res } of stalled) this.forget(res);
    for (const { res, client, unsent } of stalled) {
      // A reset discards what the kernel still holds for the peer (up to its send buffer, megabytes);
      // a plain close would keep it queued on an orphaned socket. TLS sockets cannot reset.
      if (res.socket && !(res.socket instanceof TLSSocket)) res.socket.resetAndDestroy();
      else res.destroy();
      const limit = this.limits.maxEventStreamBufferBytes;
      this.log(`event stream of ${client} dropped: it does not read (${unsent} bytes unsent, limit ${limit})`);
    }
  }

  closeAll(): void {
    this.flush();
    for (const res of [...this.streams.keys()]) res.end();
  }

  private forget(res: ServerResponse): void {
    const client = this.streams.get(res);
    if (client === undefined) return;
    this.streams.delete(res);
    this.perAddress.remove(client);
  }
}

function refuse(res: ServerResponse, status: 429 | 503, message: string): void {
  const headers = { 'content-type': 'application/json', 'x-loramesh-error': ErrorCodes.LIMIT, 'retry-after': '10' };
  res.writeHead(status, { ...headers, connection: 'close' });
  res.end(JSON.stringify({ error: ErrorCodes.LIMIT, message }));
}
