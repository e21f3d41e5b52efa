/**
 * The tab's WebSocket to the coordinator: binary frames into the neutral WorkerSession and its
 * replies back out, an app-level heartbeat (browsers cannot send ws pings; they do answer the
 * coordinator's pings on their own), a clean close (1000) when the tab goes away, and reconnection
 * with jittered exponential backoff (shared/protocol/reconnect.ts, the same as the Node worker's).
 * A refusal that cannot change (wrong token, other protocol, missing codec, quarantine:
 * shared/protocol/refusal.ts) is not retried: that would only hammer it.
 */
import { encodeMessage } from '../../shared/protocol/codec.ts';
import { reconnectDelayMs } from '../../shared/protocol/reconnect.ts';
import { refusalFromClose } from '../../shared/protocol/refusal.ts';
import type { WorkerSession } from '../../shared/worker-loop.ts';

export interface ConnectionHooks {
  log(line: string): void;
  /** every frame from the coordinator, before the session handles it */
  incoming(bytes: Uint8Array): void;
  /** every frame the session sends */
  outgoing(bytes: Uint8Array): void;
  connecting(attempt: number): void;
  open(): void;
  reconnecting(delayMs: number, why: string): void;
  /** the connection ended for good: the run is done, the tab left, or the coordinator refused us */
  ended(why: 'finished' | 'left' | 'refused', detail: string): void;
}

export const HEARTBEAT_MS = 3000;

export class Connection {
  private ws: WebSocket | null = null;
  private failures = 0;
  private stopped = false;
  /** refused for good: not even a tab restored from the back/forward cache reconnects */
  private refused = false;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  /** where the next attempt goes: the page's coordinator, where it redirected us, or a fallback */
  private current: string;

  constructor(
    private readonly url: string,
    private readonly session: WorkerSession,
    private readonly hooks: ConnectionHooks,
    private readonly token?: string,
  ) {
    this.current = url;
  }

  start(): void {
    // pagehide (not unload/beforeunload) fires on close, reload and navigation, and on bfcache entry.
    addEventListener('pagehide', () => this.leave('tab closed'));
    addEventListener('pageshow', (event) => {
      if (event.persisted && this.stopped && !this.refused && !this.session.finished) {
        this.stopped = false;
        this.open();
      }
    });
    this.open();
  }

  /** Closes cleanly (1000) so the coordinator reassigns any held micro-batch at once. */
  leave(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.heartbeat);
    this.ws?.close(1000, reason);
    this.hooks.ended(this.session.finished ? 'finished' : 'left', reason);
  }

  private send(ws: WebSocket, bytes: Uint8Array): void {
    if (ws.readyState !== WebSocket.OPEN) return;
    ws.send(bytes);
  }

  private open(): void {
    this.hooks.connecting(this.failures + 1);
    // The join token rides in a subprotocol: the coordinator checks it in the HTTP upgrade.
    const ws = new WebSocket(
      this.current,
      this.token ? ['loramesh', `loramesh.token.${base64url(this.token)}`] : undefined,
    );
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let wasOpen = false;
    ws.onopen = () => {
      wasOpen = true;
      this.hooks.open();
      this.send(ws, this.session.hello());
      clearInterval(this.heartbeat);
      this.heartbeat = setInterval(
        () => this.send(ws, encodeMessage({ type: 'heartbeat', sentAt: Date.now() })),
        HEARTBEAT_MS,
      );
    };
    ws.onmessage = (event: MessageEvent) => {
      if (!(event.data instanceof ArrayBuffer)) {
        this.hooks.log('warning: ignored a text frame (the protocol is binary)');
        return;
      }
      const bytes = new Uint8Array(event.data);
      this.hooks.incoming(bytes);
      const reply = (out: Uint8Array) => {
        this.hooks.outgoing(out);
        this.send(ws, out);
      };
      void this.session.receive(bytes, reply).then(() => {
        if (this.session.finished) this.leave('run finished');
      });
    };
    ws.onclose = (event: CloseEvent) => {
      if (this.ws === ws) clearInterval(this.heartbeat);
      if (this.stopped) return;
      // A browser never sees a refused upgrade's HTTP status, only the close and any reject frame.
      const refusal = this.session.refused ?? refusalFromClose(event.code, event.reason);
      if (refusal) {
        this.stopped = this.refused = true;
        this.hooks.ended('refused', `${refusal.code}: ${refusal.reason}`);
        return;
      }
      if (this.session.redirect) {
        // sent to one of the coordinator's ingestion threads: go there at once
        this.current = this.session.redirect;
        this.session.redirect = null;
        this.hooks.log(`sent to ${this.current}`);
        this.open();
        return;
      }
      this.failures = wasOpen ? 0 : this.failures + 1;
      const urls = [this.url, ...this.session.fallback.filter((u) => u !== this.url)];
      if (this.failures > 0 && urls.length > 1) this.current = urls[(urls.indexOf(this.current) + 1) % urls.length];
      const delay = reconnectDelayMs(this.failures, Math.random());
      this.hooks.reconnecting(delay, wasOpen ? `connection closed (${event.code})` : 'could not connect');
      setTimeout(() => this.open(), delay);
    };
  }
}

function base64url(text: string): string {
  let binary = '';
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}
