// The Node client options (node/ws-client.ts) on the wire: a raw TCP server answers the WebSocket upgrade by hand
// and reads the client's first binary frame. It carries the mask bit with an all-zero key, so its payload bytes are
// the message's own (nothing XOR-ed, and ws's server skips unmasking such a frame); a ws server still receives the
// message intact.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type AddressInfo } from 'node:net';
import { test } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { NODE_CLIENT } from '../../node/ws-client.ts';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const payload = Uint8Array.from({ length: 300 }, (_, i) => (i * 37 + 11) & 0xff);

test('a Node client frame carries a zero masking key: its payload is the message bytes as they are', async () => {
  let received = Buffer.alloc(0);
  const server = createServer((socket) => {
    socket.once('data', (request) => {
      const key = /sec-websocket-key: (\S+)/i.exec(request.toString())![1];
      const accept = createHash('sha1')
        .update(key + GUID)
        .digest('base64');
      socket.write(
        `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
      );
      socket.on('data', (chunk) => {
        received = Buffer.concat([received, chunk]);
      });
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const ws = new WebSocket(`ws://127.0.0.1:${(server.address() as AddressInfo).port}/`, NODE_CLIENT);
  await once(ws, 'open');
  ws.send(payload);
  while (received.length < 8 + payload.length) await new Promise((r) => setTimeout(r, 5));
  ws.terminate();
  server.close();
  assert.equal(received[0], 0x82, 'FIN + binary');
  assert.equal(received[1], 0x80 | 126, 'masked, 16-bit length');
  assert.equal(received.readUInt16BE(2), payload.length);
  assert.deepEqual([...received.subarray(4, 8)], [0, 0, 0, 0], 'the masking key is zero');
  assert.deepEqual(new Uint8Array(received.subarray(8, 8 + payload.length)), payload);
});

test('a ws server receives a zero-masked message intact', async () => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  const got = new Promise<Buffer>((resolve) =>
    wss.on('connection', (socket) => socket.on('message', (data) => resolve(data as Buffer))),
  );
  const ws = new WebSocket(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}/`, NODE_CLIENT);
  await once(ws, 'open');
  ws.send(payload);
  assert.deepEqual(new Uint8Array(await got), payload);
  ws.terminate();
  wss.close();
});
