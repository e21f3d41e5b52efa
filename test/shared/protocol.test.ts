// Codec round trip for every message type; malformed frames get a stable error code, never a crash.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Packr } from 'msgpackr';
import { decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import {
  firstNonFinite,
  flattenTensors,
  PROTOCOL_VERSION,
  splitTensors,
  unpackFloats,
  type Message,
} from '../../shared/protocol/messages.ts';
import { encodeFloats, F32 } from '../../shared/protocol/wire-codec.ts';
import { LoraMeshError } from '../../shared/errors.ts';

const microBatch = {
  batch: 2,
  time: 3,
  dropoutSeed: 5,
  inputIds: new Int32Array([1, 2, 3, 4, 5, 6]),
  targets: new Int32Array([2, 3, 4, 5, 6, 7]),
  lossMask: new Float32Array([0, 1, 1, 0, 1, 1]),
};
const grads = { codec: 'f32' as const, values: new Float32Array([0.5, -1.25, 3e-8, 1e30]) };
const int8 = encodeFloats(new Float32Array([0.5, -1.25, 3e-8, 2, 7, -7, 1]), { name: 'int8', blockSize: 4 });
const manifest = {
  runId: 'r1',
  lora: { r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj'], init: 'kaiming', useRslora: false },
  model: {
    config: { model_type: 'llama', vocab_size: 10 },
    files: [{ name: 'model.safetensors', sha256: 'a'.repeat(64), bytes: 100 }],
  },
  adapter: [{ name: 'model.layers.0.self_attn.q_proj.lora_A', shape: [2, 2] }],
  wire: { up: { name: 'f32' }, down: { name: 'int8', blockSize: 4 } },
};

const samples: Message[] = [
  { type: 'hello', protocol: PROTOCOL_VERSION, token: 't', name: 'n', backend: 'wasm', platform: 'node' },
  { type: 'ready', paramVersion: 3 },
  { type: 'result', assignmentId: 'abc', paramVersion: 3, tokenCount: 4, lossSum: 7.5, computeMs: 12.5, grads },
  { type: 'worker-error', assignmentId: 'abc', code: 'LM_ERR_STALE', message: 'old' },
  { type: 'heartbeat', sentAt: 123 },
  { type: 'welcome', workerId: 'w1', manifest: manifest as never },
  { type: 'params', paramVersion: 4, tensors: grads },
  { type: 'params', paramVersion: 5, deltaFrom: 4, tensors: int8 },
  {
    type: 'params',
    paramVersion: 6,
    deltaFrom: 5,
    tensors: { codec: 'bf16', values: new Uint16Array([0x3f80, 0xbf80]) },
  },
  { type: 'assign', assignmentId: 'abc', paramVersion: 4, step: 1, index: 0, microBatch },
  {
    type: 'assign-local',
    assignmentId: 'abd',
    paramVersion: 4,
    step: 1,
    index: 2,
    lr: 0.01,
    microBatches: [microBatch, microBatch],
  },
  { type: 'reject', code: 'LM_ERR_SHAPE', message: 'bad' },
  { type: 'done', reason: 'finished' },
];

test('every message type survives encode → decode with typed arrays intact', () => {
  for (const m of samples) {
    const back = decodeMessage(encodeMessage(m));
    assert.deepEqual(back, m, m.type);
  }
  const r = decodeMessage(encodeMessage(samples[2])) as Extract<Message, { type: 'result' }>;
  assert.ok(r.grads.values instanceof Float32Array);
  const p = decodeMessage(encodeMessage(samples[7])) as Extract<Message, { type: 'params' }>;
  assert.ok(p.tensors.values instanceof Int8Array && p.tensors.scales instanceof Float32Array);
  const a = decodeMessage(encodeMessage(samples[9])) as Extract<Message, { type: 'assign' }>;
  assert.ok(a.microBatch.inputIds instanceof Int32Array);
});

test('a float payload costs its raw bytes plus a small constant, in every codec', () => {
  const n = 10_000;
  const x = Float32Array.from({ length: n }, (_, i) => Math.sin(i));
  for (const spec of [
    F32,
    { name: 'f16' as const },
    { name: 'bf16' as const },
    { name: 'int8' as const, blockSize: 64 },
  ]) {
    const tensors = encodeFloats(x, spec);
    const raw = tensors.values.byteLength + (tensors.scales?.byteLength ?? 0);
    const frame = encodeMessage({
      type: 'result',
      assignmentId: 'a'.repeat(21),
      paramVersion: 12345,
      tokenCount: 999,
      lossSum: 1.5,
      computeMs: 12.25,
      grads: tensors,
    });
    assert.ok(
      frame.length >= raw && frame.length <= raw + 200,
      `${spec.name}: frame ${frame.length} bytes for ${raw} payload bytes`,
    );
  }
});

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof LoraMeshError, `expected a LoraMeshError, got ${err}`);
    return err.code;
  }
  assert.fail('expected a rejection');
}

const packr = new Packr({ useRecords: false, moreTypes: true });

test('malformed frames get stable error codes', () => {
  assert.equal(
    codeOf(() => decodeMessage(new Uint8Array(0))),
    'LM_ERR_DECODE',
  );
  assert.equal(
    codeOf(() => decodeMessage(new Uint8Array([0x92, 0x01]))),
    'LM_ERR_DECODE',
  ); // truncated array
  assert.equal(
    codeOf(() => decodeMessage(packr.pack(42))),
    'LM_ERR_DECODE',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack([1, 2]))),
    'LM_ERR_DECODE',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ type: 'launch-missiles' }))),
    'LM_ERR_UNKNOWN_TYPE',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ type: 'toString' }))),
    'LM_ERR_UNKNOWN_TYPE',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ type: 'ready' }))),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ type: 'ready', paramVersion: -2 }))),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ ...samples[2], lossSum: NaN }))),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ ...samples[2], grads: { x: [1, 2] } }))),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ ...samples[2], grads: { codec: 'f8', values: new Uint8Array(4) } }))),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ ...samples[2], grads: { codec: 'f16', values: new Float32Array(4) } }))),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ ...samples[7], tensors: { ...int8, scales: new Float32Array(1) } }))),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ ...samples[7], tensors: { ...int8, blockSize: 0 } }))),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ ...samples[7], deltaFrom: -1 }))),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() =>
      decodeMessage(packr.pack({ ...samples[9], microBatch: { ...microBatch, inputIds: new Int32Array(5) } })),
    ),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ ...samples[10], microBatches: [] }))),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() =>
      decodeMessage(packr.pack({ ...samples[10], microBatches: [microBatch, { ...microBatch, lossMask: null }] })),
    ),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ ...samples[10], lr: -1 }))),
    'LM_ERR_FIELD',
  );
  assert.equal(
    codeOf(() => decodeMessage(packr.pack({ ...samples[0], platform: 'toaster' }))),
    'LM_ERR_FIELD',
  );
});

test('every single-byte truncation of a valid frame is rejected or decodes to a checked message', () => {
  const frame = encodeMessage(samples[2]);
  for (let cut = 1; cut < frame.length; cut++) {
    try {
      decodeMessage(frame.subarray(0, cut));
    } catch (err) {
      assert.ok(err instanceof LoraMeshError, `cut ${cut}: ${err}`);
    }
  }
});

test('payloads are checked against the run: codec, length, finiteness; flatten/split keep manifest order', () => {
  const spec = [
    { name: 'a', shape: [2, 2] as [number, number] },
    { name: 'b', shape: [1, 3] as [number, number] },
  ];
  const named = new Map([
    ['b', new Float32Array([5, 6, 7])],
    ['a', new Float32Array([1, 2, 3, 4])],
  ]);
  const flat = flattenTensors(named, spec);
  assert.deepEqual([...flat], [1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual([...splitTensors(flat, spec).get('b')!], [5, 6, 7]);
  assert.equal(
    codeOf(() => flattenTensors(new Map([['a', new Float32Array(4)]]), spec)),
    'LM_ERR_SHAPE',
  );
  assert.deepEqual([...unpackFloats(encodeFloats(flat, F32), F32, 7, 'grads')], [...flat]);
  assert.equal(
    codeOf(() => unpackFloats(encodeFloats(flat, F32), F32, 8, 'grads')),
    'LM_ERR_SHAPE',
  );
  assert.equal(
    codeOf(() => unpackFloats(encodeFloats(flat, { name: 'bf16' }), F32, 7, 'grads')),
    'LM_ERR_CODEC',
  );
  assert.equal(
    codeOf(() =>
      unpackFloats(encodeFloats(flat, { name: 'int8', blockSize: 4 }), { name: 'int8', blockSize: 8 }, 7, 'grads'),
    ),
    'LM_ERR_CODEC',
  );
  assert.equal(
    codeOf(() =>
      unpackFloats({ codec: 'f32', values: new Float32Array([0, 1, Infinity, 0, 0, 0, 0]) }, F32, 7, 'grads'),
    ),
    'LM_ERR_NON_FINITE',
  );
  assert.equal(
    codeOf(() =>
      unpackFloats({ codec: 'f16', values: new Uint16Array([0, 0x7e00, 0, 0, 0, 0, 0]) }, { name: 'f16' }, 7, 'grads'),
    ),
    'LM_ERR_NON_FINITE',
  );
  const badScale = encodeFloats(flat, { name: 'int8', blockSize: 4 });
  badScale.scales![1] = NaN;
  assert.equal(
    codeOf(() => unpackFloats(badScale, { name: 'int8', blockSize: 4 }, 7, 'grads')),
    'LM_ERR_NON_FINITE',
  );
});

test('firstNonFinite finds the first NaN or ±Infinity at any position, lengths not a multiple of 4 included', () => {
  for (const n of [0, 1, 3, 4, 5, 17, 1000]) {
    const x = new Float32Array(n).map((_, i) => (i % 7) - 3 + 1e-40 * i); // subnormals and −0 are finite
    if (n > 2) x[2] = -0;
    assert.equal(firstNonFinite(x), -1, `all finite, n=${n}`);
    for (const bad of [NaN, Infinity, -Infinity]) {
      for (const at of [0, Math.floor(n / 2), n - 1].filter((i) => i >= 0 && i < n)) {
        const y = x.slice();
        y[at] = bad;
        if (at + 1 < n) y[n - 1] = NaN; // a later one too: the first is reported
        assert.equal(firstNonFinite(y), at, `${bad} at ${at} of ${n}`);
      }
    }
  }
  // the largest finite float32 stays finite (x − x = 0)
  assert.equal(firstNonFinite(new Float32Array([3.4028234663852886e38, -3.4028234663852886e38, 0, 0, 1])), -1);
});

test('typed arrays decode as views of the frame when aligned, as copies otherwise, with the same values', () => {
  const kinds = [
    Int8Array,
    Uint8Array,
    Int16Array,
    Uint16Array,
    Int32Array,
    Uint32Array,
    Float32Array,
    Float64Array,
  ] as const;
  const seen = { view: 0, copy: 0 };
  for (const Kind of kinds) {
    const values = new Kind(37).map((_, i) => ((i * 37) % 101) - 50);
    // The payload's offset in the frame moves with the length of the string before it.
    for (let pad = 0; pad < 8; pad++) {
      const frame = encodeMessage({ type: 'heartbeat', sentAt: 1, pad: 'x'.repeat(pad), values } as never);
      const bytes = new Uint8Array(frame.length);
      bytes.set(frame); // a frame of its own, as ws hands over
      const got = (decodeMessage(bytes) as unknown as { values: InstanceType<typeof Kind> }).values;
      assert.ok(got instanceof Kind, `${Kind.name}, pad ${pad}`);
      assert.deepEqual([...got], [...values], `${Kind.name}, pad ${pad}`);
      if (got.buffer === bytes.buffer) {
        seen.view++;
        assert.equal(got.byteOffset % Kind.BYTES_PER_ELEMENT, 0);
      } else {
        seen.copy++;
        bytes.fill(0); // a copy does not change with the frame
        assert.deepEqual([...got], [...values]);
      }
    }
  }
  assert.ok(seen.view > 0 && seen.copy > 0, `both paths taken: ${JSON.stringify(seen)}`);
  // A typed-array payload that is not a whole number of elements is a decode error, not a crash.
  const odd = new Packr({ useRecords: false, moreTypes: true }).pack({
    type: 'heartbeat',
    sentAt: 1,
    v: new Uint8Array(5),
  });
  const at = odd.lastIndexOf(1, odd.length - 6); // the typed-array code (1 = Uint8Array) before the 5 bytes
  odd[at] = 7; // Float32Array: 5 bytes is not whole elements
  assert.equal(
    codeOf(() => decodeMessage(odd)),
    'LM_ERR_DECODE',
  );
});

test(
  'result and params frames put their float values at a multiple of 4 bytes, ' + 'so the receiver reads them in place',
  () => {
    let aligned = 0;
    for (const n of [1, 3, 60, 63, 64, 65, 1000, 16383, 16384, 70001]) {
      for (const id of ['a', 'ab', 'abc', 'abcd']) {
        const x = new Float32Array(n).map((_, i) => Math.sin(i));
        for (const packed of [
          encodeFloats(x, F32),
          encodeFloats(x, { name: 'bf16' }),
          encodeFloats(x, { name: 'int8', blockSize: 7 }),
        ]) {
          for (const m of [
            {
              type: 'result',
              assignmentId: id,
              paramVersion: n,
              tokenCount: 3,
              lossSum: 0.1 * n,
              computeMs: 12.25,
              grads: packed,
            },
            { type: 'params', paramVersion: n * 1000, ...(id.length > 2 ? { deltaFrom: 7 } : {}), tensors: packed },
          ] as Message[]) {
            const frame = encodeMessage(m);
            assert.equal((frame.length - packed.values.byteLength) % 4, 0, `${m.type} ${packed.codec} n=${n} id=${id}`);
            const own = new Uint8Array(frame); // offset 0, as ws and browsers hand a large message over
            const back = decodeMessage(own) as Message & { grads?: typeof packed; tensors?: typeof packed };
            const got = (back.grads ?? back.tensors)!;
            assert.deepEqual([...got.values], [...packed.values]);
            assert.equal(got.values.buffer, own.buffer, 'read in place');
            aligned++;
          }
        }
      }
    }
    assert.equal(aligned, 10 * 4 * 3 * 2);
  },
);

test('hello.arithmetic: absent (an older worker: simd128 only) or a list of names; anything else is refused', () => {
  const hello = samples[0];
  const old = decodeMessage(encodeMessage(hello));
  assert.equal(old.type === 'hello' && old.arithmetic, undefined);
  const offered = decodeMessage(encodeMessage({ ...hello, arithmetic: ['simd128', 'relaxed-fma'] } as Message));
  assert.deepEqual(offered.type === 'hello' && offered.arithmetic, ['simd128', 'relaxed-fma']);
  for (const arithmetic of ['simd128', [1], ['x'.repeat(33)], new Array(9).fill('simd128'), null]) {
    assert.throws(
      () => decodeMessage(packr.pack({ ...hello, arithmetic })),
      (err: LoraMeshError) =>
        err.code === 'LM_ERR_FIELD' &&
        /hello\.arithmetic should be a list of arithmetic variant names/.test(err.message),
      JSON.stringify(arithmetic),
    );
  }
});

test("welcome.manifest.arithmetic: absent (an older coordinator's run: simd128) or a known variant", () => {
  const welcome = (arithmetic: unknown) => ({ type: 'welcome', workerId: 'w1', manifest: { ...manifest, arithmetic } });
  const old = decodeMessage(encodeMessage(samples[5]));
  assert.equal(old.type === 'welcome' && old.manifest.arithmetic, undefined);
  for (const variant of ['simd128', 'relaxed-fma']) {
    const m = decodeMessage(packr.pack(welcome(variant)));
    assert.equal(m.type === 'welcome' && m.manifest.arithmetic, variant);
  }
  for (const bad of ['fma', '', 3, ['simd128']]) {
    assert.throws(
      () => decodeMessage(packr.pack(welcome(bad))),
      (err: LoraMeshError) =>
        err.code === 'LM_ERR_FIELD' &&
        err.message.includes('welcome.manifest.arithmetic should be one of simd128, relaxed-fma'),
      JSON.stringify(bad),
    );
  }
});
