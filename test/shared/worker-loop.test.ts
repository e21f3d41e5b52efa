// The worker session and the run's arithmetic variant: hello offers what the platform's kernels support (an
// older platform without kernels: simd128); the welcome's manifest selects its variant before anything is
// computed, and a variant the kernels lack fails with LM_ERR_ARITHMETIC instead of computing other bits.
// The kernels are faked, so this holds whether or not this Node runs relaxed SIMD.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ArithmeticKernels, ArithmeticVariant } from '../../shared/arithmetic.ts';
import { decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import type { Message, RunManifest } from '../../shared/protocol/messages.ts';
import { WorkerSession, type WorkerPlatform } from '../../shared/worker-loop.ts';
import { tinyManifest } from '../helpers/tiny-mesh.ts';

/** kernels that support `supported` and record each selection */
function fakeKernels(supported: ArithmeticVariant[]): ArithmeticKernels & { selected: ArithmeticVariant[] } {
  const selected: ArithmeticVariant[] = [];
  return { supported: () => supported, select: (v) => selected.push(v) && undefined, selected };
}

function session(arithmetic?: ArithmeticKernels): { session: WorkerSession; lines: string[] } {
  const lines: string[] = [];
  const platform: WorkerPlatform = {
    backend: 'wasm',
    platform: 'node',
    ...(arithmetic ? { arithmetic } : {}),
    loadBase: () => Promise.reject(new Error('the base is never loaded: compute is simulated')),
    log: (line) => lines.push(line),
  };
  const hooks = { compute: () => Promise.reject(new Error('nothing is assigned here')) };
  return { session: new WorkerSession(platform, { hooks }), lines };
}

/** The session's replies to a welcome with this manifest. */
async function welcome(s: WorkerSession, manifest: RunManifest): Promise<Message[]> {
  const replies: Message[] = [];
  await s.receive(encodeMessage({ type: 'welcome', workerId: 'w1', manifest }), (b) => replies.push(decodeMessage(b)));
  return replies;
}

test("hello offers the kernels' variants; a platform without kernels offers simd128", () => {
  const both = decodeMessage(session(fakeKernels(['simd128', 'relaxed-fma'])).session.hello());
  assert.deepEqual(both.type === 'hello' && both.arithmetic, ['simd128', 'relaxed-fma']);
  const none = decodeMessage(session().session.hello());
  assert.deepEqual(none.type === 'hello' && none.arithmetic, ['simd128']);
});

test("the welcome's manifest selects its variant before the worker says ready", async () => {
  const kernels = fakeKernels(['simd128', 'relaxed-fma']);
  const { session: s, lines } = session(kernels);
  const replies = await welcome(s, { ...tinyManifest('r'), arithmetic: 'relaxed-fma' });
  assert.deepEqual(kernels.selected, ['relaxed-fma']);
  assert.deepEqual(
    replies.map((m) => m.type),
    ['ready'],
  );
  assert.ok(lines.includes('computing with arithmetic relaxed-fma'), lines.join('\n'));
});

test('a manifest without arithmetic (an older coordinator) selects simd128', async () => {
  const kernels = fakeKernels(['simd128', 'relaxed-fma']);
  const replies = await welcome(session(kernels).session, tinyManifest('old'));
  assert.deepEqual(kernels.selected, ['simd128']);
  assert.deepEqual(
    replies.map((m) => m.type),
    ['ready'],
  );
});

test('a variant the kernels lack fails with LM_ERR_ARITHMETIC, selects nothing and never says ready', async () => {
  for (const kernels of [fakeKernels(['simd128']), undefined]) {
    const { session: s } = session(kernels);
    const replies = await welcome(s, { ...tinyManifest('r'), arithmetic: 'relaxed-fma' });
    assert.deepEqual(kernels?.selected ?? [], []);
    assert.equal(replies.length, 1);
    const [error] = replies;
    assert.equal(error.type === 'worker-error' && error.code, 'LM_ERR_ARITHMETIC');
    assert.match(
      error.type === 'worker-error' ? error.message : '',
      /the run computes with arithmetic relaxed-fma; this worker supports simd128/,
    );
  }
});
