/**
 * What the mesh needs of one worker's connection, and what it hears from it. A `ws` WebSocket is
 * one (attachWebSocket); a test's in-memory fake is another, so the mesh is tested without sockets.
 */
import type { WebSocket } from 'ws';

export interface Peer {
  /** bytes queued but not sent yet (backpressure) */
  readonly bufferedAmount: number;
  readonly open: boolean;
  send(frame: Uint8Array): void;
  /** closes with a WebSocket close code and reason */
  close(code: number, reason: string): void;
  /** drops the connection at once */
  terminate(): void;
  /** a liveness probe; the answer arrives as PeerEvents.pong */
  ping(): void;
}

export interface PeerEvents {
  frame(data: Uint8Array, isBinary: boolean): void;
  pong(): void;
  close(): void;
  error(err: Error): void;
}

/** Hands a WebSocket to `mesh` as a Peer and forwards its events. */
export function attachWebSocket(mesh: { attach(peer: Peer): PeerEvents }, ws: WebSocket): void {
  const events = mesh.attach({
    get bufferedAmount() {
      return ws.bufferedAmount;
    },
    get open() {
      return ws.readyState === ws.OPEN;
    },
    send: (frame) => ws.send(frame),
    close: (code, reason) => ws.close(code, reason),
    terminate: () => ws.terminate(),
    ping: () => ws.ping(),
  });
  ws.on('message', (data, isBinary) => events.frame(data as Buffer, isBinary));
  ws.on('pong', () => events.pong());
  ws.on('close', () => events.close());
  ws.on('error', (err) => events.error(err));
}
