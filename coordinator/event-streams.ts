/**
 * The /api/events publisher: Server-Sent Event streams with a global and a per-address cap, and a
 * bound on what each may hold unsent. A client that stops reading is dropped once its unsent bytes
 * would pass the bound, so a crowd of stalled readers costs at most cap × bound of memory.
 */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { ErrorCodes } from '../shared/errors.ts';
import { AddressCounter, type NetLimits } from './net-limits.ts';

type StreamLimits = Pick<NetLimits, 'maxEventStreams' | 'maxEventStreamsPerAddress' | 'maxEventStreamBufferBytes'>;

export class EventStreams {
  /** open streams → the client key they count under */
  private readonly streams = new Map<ServerResponse, string>();
  private readonly perAddress: AddressCounter;

  /** `log` gets one line per dropped stream; it may publish (the monitor turns log lines into events) */
  constructor(private readonly limits: StreamLimits, private readonly log: (line: string) => void) {
    this.perAddress = new AddressCounter(limits.maxEventStreamsPerAddress);
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

  /** Sends one event to every stream; drops those that would pass the unsent-bytes bound. */
  publish(event: unknown): void {
    const data = `data: ${JSON.stringify(event)}\n\n`;
    const bytes = Buffer.byteLength(data);
    const stalled: { res: ServerResponse; client: string; unsent: number }[] = [];
    for (const [res, client] of this.streams) {
      const unsent = res.writableLength;
      if (unsent + bytes > this.limits.maxEventStreamBufferBytes) stalled.push({ res, client, unsent });
      else res.write(data);
    }
    // Forget them before logging: the log line is itself published.
    for (const { res } of stalled) this.forget(res);
    for (const { res, client, unsent } of stalled) {
      res.destroy();
      const limit = this.limits.maxEventStreamBufferBytes;
      this.log(`event stream of ${client} dropped: it does not read (${unsent} bytes unsent, limit ${limit})`);
    }
  }

  closeAll(): void {
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
