/**
 * What the mesh needs of one worker's connection, and what it hears from it. A `ws` WebSocket is
 * one (net/ws-peer.ts); a test's in-memory fake is another, so the mesh is tested without sockets.
 */
export interface Peer {
  /** bytes queued but not sent yet (backpressure) */
  readonly bufferedAmount: number;
  readonly open: boolean;
  /** the connection upgraded as a relay, with the relay token (server.ts) */
  readonly relay?: boolean;
  /** the host name the peer reached this server by (its upgrade's Host header, port left out) */
  readonly hostname?: string;
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
