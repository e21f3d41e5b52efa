// A relay and its parent say their relay protocol (messages.ts RELAY_PROTOCOL): a relay whose parent speaks
// another one, or predates the numbers, stops at the welcome with LM_ERR_PROTOCOL_VERSION naming both, instead
// of answering every step in a form the parent refuses, and closes its link without reconnecting. (The parent's
// side: test/coordinator/engine/mesh.test.ts.)
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { WebSocketServer } from 'ws';
import { runRelay } from '../../../coordinator/relay/relay.ts';
import { asBytes, decodeMessage, encodeMessage } from '../../../shared/protocol/codec.ts';
import { type Message, RELAY_PROTOCOL } from '../../../shared/protocol/messages.ts';
import { tinyManifest } from '../../helpers/tiny-mesh.ts';

/** A parent that answers a relay's hello with a welcome carrying `relayProtocol` (undefined: none). */
async function parentSaying(relayProtocol: number | undefined) {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(server, 'listening');
  const hellos: Message[] = [];
  const links = { opened: 0, closed: 0 };
  server.on('connection', (ws) => {
    links.opened++;
    ws.on('close', () => links.closed++);
    ws.on('message', (data) => {
      const m = decodeMessage(asBytes(data as Buffer));
      hellos.push(m);
      if (m.type !== 'hello') return;
      ws.send(
        encodeMessage({
          type: 'welcome',
          workerId: 'r1',
          manifest: tinyManifest('relay-protocol'),
          ...(relayProtocol === undefined ? {} : { relayProtocol }),
        }),
      );
    });
  });
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}/ws`, hellos, links, server };
}

for (const said of [undefined, RELAY_PROTOCOL + 1]) {
  test(`a relay stops at a welcome of relay protocol ${said ?? '(none)'}, naming both`, async () => {
    const parent = await parentSaying(said);
    const lines: string[] = [];
    const relay = runRelay({
      parent: parent.url,
      token: 'relay-secret',
      host: '127.0.0.1',
      port: 0,
      name: 'r1',
      log: (line) => lines.push(line),
    });
    try {
      await assert.rejects(relay.finished, (err: Error & { code?: string }) => {
        assert.equal(err.code, 'LM_ERR_PROTOCOL_VERSION');
        assert.match(
          err.message,
          new RegExp(
            `the parent speaks relay protocol ${said === undefined ? 'none \\(a parent from before relay protocol numbers\\)' : said}, this relay ${RELAY_PROTOCOL}`,
          ),
        );
        return true;
      });
      await assert.rejects(relay.ready);
      // it said its own number in the hello, and served no workers
      const hello = parent.hellos.find((m) => m.type === 'hello');
      assert.equal(hello?.type === 'hello' && hello.relay && hello.relayProtocol, RELAY_PROTOCOL);
      assert.ok(!lines.some((l) => l.includes('serving run')));
      // it closed its link and does not come back (a reconnect loop would keep opening links)
      await new Promise((r) => setTimeout(r, 2500));
      assert.deepEqual(parent.links, { opened: 1, closed: 1 });
    } finally {
      await relay.close();
      parent.server.close();
    }
  });
}
