import type { WebSocket } from 'ws';
import type { Peer, PeerEvents } from '../engine/peer.ts';

/**
 * Hands a WebSocket to `mesh` as a Peer and forwards its events; `relay`: it upgraded with the relay token;
 * `hostname`: the host it reached us by.
 */
export function attachWebSocket(
  mesh: { attach(peer: Peer): PeerEvents },
  ws: WebSocket,
  relay = false,
  hostname?: string,
): void {
  const events = mesh.attach({
    relay,
    hostname,
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
