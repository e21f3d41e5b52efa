// safetensors: round trips per dtype, the byte layout, a fixture from an independent (Python)
// writer read bit for bit, and malformed inputs, each refused with LM_ERR_SAFETENSORS.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ErrorCodes, LoraMeshError } from '../../../shared/errors.ts';
import {
  decodeSafetensors,
  decodeTensorData,
  encodeSafetensors,
  MAX_HEADER_BYTES,
  readSafetensorsHeader,
  type SafetensorsDType,
} from '../../../shared/formats/safetensors.ts';
import { Rng } from '../../../shared/rng.ts';
import { throwsCode } from '../../helpers/assert.ts';

const FIXTURE_DIR = new URL('../../fixtures/safetensors/', import.meta.url);

const refused = (bytes: Uint8Array, messagePart?: RegExp) =>
  throwsCode(() => decodeSafetensors(bytes), ErrorCodes.SAFETENSORS, messagePart);

/** A file from a raw header object and data bytes, for malformed-header cases. */
function rawFile(header: unknown, data = new Uint8Array(0)): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  return withHeaderBytes(json, data);
}
function withHeaderBytes(json: Uint8Array, data: Uint8Array, declaredLength: bigint = BigInt(json.length)): Uint8Array {
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, declaredLength, true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}
const headerLength = (bytes: Uint8Array) => Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
const headerJson = (bytes: Uint8Array) =>
  JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength(bytes))));

function randomFloats(seed: number, n: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => rng.normal());
}

test('F32 and I32 round trip exactly, with metadata and shapes (including scalars and empty tensors)', () => {
  const weight = randomFloats(1, 12);
  const ids = Int32Array.from([0, -1, 2147483647, -2147483648, 42, 7]);
  const bytes = encodeSafetensors(
    {
      'layer.weight': { data: weight, shape: [3, 4] },
      ids: { data: ids, shape: [2, 3] },
      scale: { data: new Float32Array([0.5]), shape: [] },
      empty: { data: new Float32Array(0), shape: [0, 5] },
    },
    { format: 'pt', note: 'ünïcode ✓' },
  );
  const { metadata, tensors } = decodeSafetensors(bytes);
  assert.deepEqual(metadata, { format: 'pt', note: 'ünïcode ✓' });
  assert.deepEqual([...tensors.keys()], ['empty', 'ids', 'layer.weight', 'scale']);
  const w = tensors.get('layer.weight')!;
  assert.equal(w.dtype, 'F32');
  assert.deepEqual(w.shape, [3, 4]);
  assert.deepEqual(w.data, weight);
  const i = tensors.get('ids')!;
  assert.equal(i.dtype, 'I32');
  assert.ok(i.data instanceof Int32Array);
  assert.deepEqual(i.data, ids);
  assert.deepEqual(tensors.get('scale')!.shape, []);
  assert.deepEqual([...tensors.get('scale')!.data], [0.5]);
  assert.equal(tensors.get('empty')!.data.length, 0);
});

test('F16 and BF16 round trip within their relative error bounds; I64 round trips int32 values', () => {
  const values = Float32Array.from(randomFloats(2, 1000), (v) => v * 100);
  const ids = Int32Array.from([0, 1, -1, 2147483647, -2147483648]);
  const bytes = encodeSafetensors({
    half: { data: values, shape: [10, 100], dtype: 'F16' },
    brain: { data: values, shape: [1000], dtype: 'BF16' },
    ids: { data: ids, shape: [5], dtype: 'I64' },
  });
  const { tensors } = decodeSafetensors(bytes);
  const bound: Record<string, number> = { half: 2 ** -11, brain: 2 ** -8 };
  for (const name of ['half', 'brain']) {
    const t = tensors.get(name)!;
    assert.ok(t.data instanceof Float32Array);
    for (let k = 0; k < values.length; k++) {
      const rel = Math.abs(t.data[k] - values[k]) / Math.abs(values[k]);
      assert.ok(rel <= bound[name], `${name}[${k}]: ${values[k]} → ${t.data[k]} (relative error ${rel})`);
    }
  }
  assert.equal(tensors.get('half')!.dtype, 'F16');
  assert.equal(tensors.get('brain')!.dtype, 'BF16');
  assert.equal(tensors.get('ids')!.dtype, 'I64');
  assert.deepEqual(tensors.get('ids')!.data, ids);
  // Each I64 is 8 bytes, sign-extended: -1 is eight 0xff bytes.
  const { dataStart, entries } = readSafetensorsHeader(bytes);
  const begin = dataStart + entries.get('ids')!.data_offsets[0];
  assert.deepEqual([...bytes.subarray(begin + 16, begin + 24)], Array(8).fill(0xff));
});

test('byte layout: u64 header length, 8-byte aligned data start, space padding, exact total size', () => {
  const tensors = {
    b: { data: new Float32Array(3), shape: [3] }, // 12 bytes
    a: { data: new Float32Array(5), shape: [5], dtype: 'F16' as SafetensorsDType }, // 10 bytes
    c: { data: new Int32Array(2), shape: [1, 2] }, // 8 bytes
  };
  const bytes = encodeSafetensors(tensors, { format: 'pt' });
  const n = headerLength(bytes);
  assert.equal(new DataView(bytes.buffer).getUint32(4, true), 0, 'high word of the u64 length');
  assert.equal((8 + n) % 8, 0);
  assert.equal(bytes.length, 8 + n + 12 + 10 + 8);
  const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  assert.match(text, /^\{.*\} *$/);
  const header = headerJson(bytes);
  // Data is laid out in sorted name order, back to back from offset 0.
  assert.deepEqual(header.a, { dtype: 'F16', shape: [5], data_offsets: [0, 10] });
  assert.deepEqual(header.b, { dtype: 'F32', shape: [3], data_offsets: [10, 22] });
  assert.deepEqual(header.c, { dtype: 'I32', shape: [1, 2], data_offsets: [22, 30] });
  assert.deepEqual(header.__metadata__, { format: 'pt' });
  assert.deepEqual(readSafetensorsHeader(bytes).dataStart, 8 + n);
});

test('encoding is deterministic: insertion order of tensors and metadata does not change the bytes', () => {
  const x = randomFloats(3, 6);
  const y = Int32Array.from([1, 2]);
  const one = encodeSafetensors({ x: { data: x, shape: [2, 3] }, y: { data: y, shape: [2] } }, { a: '1', b: '2' });
  const two = encodeSafetensors({ y: { data: y, shape: [2] }, x: { data: x, shape: [2, 3] } }, { b: '2', a: '1' });
  assert.deepEqual(one, two);
});

test('names that are special in JavaScript ("__proto__", "0") are ordinary tensor names', () => {
  // A computed key makes "__proto__" an own property, as JSON.parse does for a header.
  const bytes = encodeSafetensors({
    ['__proto__']: { data: new Float32Array([1]), shape: [1] },
    0: { data: new Float32Array([2]), shape: [1] },
  });
  assert.deepEqual(Object.keys(headerJson(bytes)), ['0', '__proto__']); // "0" < "_" in sorted order
  const { tensors } = decodeSafetensors(bytes);
  assert.deepEqual(tensors.get('__proto__')!.data, new Float32Array([1]));
  assert.deepEqual(tensors.get('0')!.data, new Float32Array([2]));
});

test('reads a file written by an independent Python writer, bit for bit (torch half rounding)', () => {
  const bytes = new Uint8Array(readFileSync(new URL('mixed.safetensors', FIXTURE_DIR)));
  const expected = JSON.parse(readFileSync(new URL('mixed.expected.json', FIXTURE_DIR), 'utf8'));
  assert.equal(bytes.length, expected.file_bytes);
  assert.equal(headerLength(bytes), expected.header_length);
  const { metadata, tensors } = decodeSafetensors(bytes);
  assert.deepEqual(metadata, expected.metadata);
  assert.deepEqual([...tensors.keys()].sort(), Object.keys(expected.tensors).sort());

  const bits32 = (data: Float32Array) => [...new Uint32Array(data.buffer, data.byteOffset, data.length)];
  const isNaN32 = (hex: string) => (parseInt(hex, 16) & 0x7fffffff) > 0x7f800000;
  const source = Float32Array.from(
    expected.source_f32_bits as string[],
    (h) => new Float32Array(new Uint32Array([parseInt(h, 16)]).buffer)[0],
  );
  let checked = 0;
  for (const [name, want] of Object.entries<Record<string, unknown>>(expected.tensors)) {
    const t = tensors.get(name)!;
    assert.equal(t.dtype, want.dtype, name);
    assert.deepEqual(t.shape, want.shape, name);
    if (want.dtype === 'I64') {
      assert.deepEqual([...t.data], want.values);
      continue;
    }
    const got = bits32(t.data as Float32Array);
    (want.decoded_f32_bits as string[]).forEach((hex, k) => {
      if (isNaN32(hex)) assert.ok(Number.isNaN(t.data[k]), `${name}[${k}] should be NaN`);
      else assert.equal(got[k], parseInt(hex, 16), `${name}[${k}]: got 0x${got[k].toString(16)}, torch 0x${hex}`);
      checked++;
    });
    if (want.stored_bits) {
      // loramesh's own float32 → 16-bit rounding gives torch's bit patterns (NaN: any NaN).
      const ours = encodeSafetensors({
        t: { data: source, shape: [source.length], dtype: want.dtype as SafetensorsDType },
      });
      const { dataStart } = readSafetensorsHeader(ours);
      const stored = new Uint16Array(ours.slice(dataStart).buffer);
      (want.stored_bits as string[]).forEach((hex, k) => {
        if (isNaN32((expected.source_f32_bits as string[])[k]))
          assert.ok(Number.isNaN(decodeSafetensors(ours).tensors.get('t')!.data[k]));
        else
          assert.equal(
            stored[k],
            parseInt(hex, 16),
            `${want.dtype} of source[${k}]: ours 0x${stored[k].toString(16)}, torch 0x${hex}`,
          );
      });
    }
  }
  assert.equal(checked, 3 * source.length);
});

test('data at an unaligned offset is copied, aligned data is a view (no copy)', () => {
  // Sorted order a (F32, 36 bytes), h (F16, 6 bytes), w (F32): w starts at data offset 42, which
  // is not a multiple of 4 even in our own file, so it must be copied; a is aligned and is a view.
  const file = encodeSafetensors({
    w: { data: randomFloats(4, 2), shape: [2] },
    h: { data: randomFloats(5, 3), shape: [3], dtype: 'F16' },
    a: { data: randomFloats(6, 9), shape: [9] },
  });
  assert.deepEqual(readSafetensorsHeader(file).entries.get('w')!.data_offsets, [42, 50]);
  const reference = decodeSafetensors(file).tensors;
  assert.equal(reference.get('a')!.data.buffer, file.buffer, 'aligned F32 should be a view into the file');
  assert.notEqual(reference.get('w')!.data.buffer, file.buffer, 'unaligned F32 should be a copy');
  for (const shift of [1, 2, 3]) {
    const host = new Uint8Array(file.length + shift);
    host.set(file, shift);
    const { tensors } = decodeSafetensors(host.subarray(shift));
    for (const name of ['a', 'h', 'w'])
      assert.deepEqual(tensors.get(name)!.data, reference.get(name)!.data, `${name} at shift ${shift}`);
  }
});

test('a header-only prefix plus the file length is enough to read the header, then decode one tensor', () => {
  const weight = randomFloats(6, 8);
  const file = encodeSafetensors({
    a: { data: new Float32Array(100), shape: [100] },
    w: { data: weight, shape: [2, 4] },
  });
  const prefix = file.slice(0, 8 + headerLength(file));
  const { entries, dataStart } = readSafetensorsHeader(prefix, file.length);
  const entry = entries.get('w')!;
  const span = file.slice(dataStart + entry.data_offsets[0], dataStart + entry.data_offsets[1]);
  assert.deepEqual(decodeTensorData('w', entry, span).data, weight);
  // without the length, offsets run past the end
  throwsCode(() => readSafetensorsHeader(prefix), ErrorCodes.SAFETENSORS, /data_offsets/);
  throwsCode(() => decodeTensorData('w', entry, span.subarray(4)), ErrorCodes.SAFETENSORS, /got 28 bytes; expected 32/);
});

test('malformed files are refused with LM_ERR_SAFETENSORS and a message naming the problem', () => {
  const good = encodeSafetensors({ w: { data: new Float32Array(4), shape: [2, 2] } });
  const entry = (over: Record<string, unknown>) => ({ dtype: 'F32', shape: [2, 2], data_offsets: [0, 16], ...over });
  const sixteen = new Uint8Array(16);

  refused(good.subarray(0, 5), /file is 5 bytes/); // truncated inside the length
  refused(good.subarray(0, good.length - 1), /data_offsets \[0,16\]/); // truncated inside the data
  refused(withHeaderBytes(new TextEncoder().encode('{}'), sixteen, 1000n), /header length 1000 runs past the end/);
  refused(
    withHeaderBytes(new TextEncoder().encode('{}'), sixteen, BigInt(MAX_HEADER_BYTES) + 1n),
    /over the 100000000-byte cap/,
  );
  refused(withHeaderBytes(new TextEncoder().encode('{}'), sixteen, 2n ** 64n - 1n), /cap/);
  refused(withHeaderBytes(new TextEncoder().encode('{"w": {"dtype": "F32",'), sixteen), /not UTF-8 JSON/);
  refused(withHeaderBytes(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), sixteen), /not UTF-8 JSON/);
  refused(rawFile([1, 2]), /should be a JSON object/);
  refused(rawFile({ w: entry({ dtype: 'F8_E4M3' }) }, sixteen), /tensor w: dtype "F8_E4M3" is not supported/);
  refused(
    rawFile({ w: entry({ shape: [2, 3] }) }, sixteen),
    /tensor w: data_offsets \[0,16\] span 16 bytes; expected 24 for F32 of shape \[2,3\]/,
  );
  refused(
    rawFile({ w: entry({ shape: [-2, -2] }) }, sixteen),
    /tensor w: shape \[-2,-2\] should be a list of non-negative integers/,
  );
  refused(rawFile({ w: entry({ shape: [2.5, 2] }) }, sixteen), /shape \[2.5,2\]/);
  refused(rawFile({ w: entry({ shape: '2x2' }) }, sixteen), /shape "2x2"/);
  refused(rawFile({ w: entry({ data_offsets: [8, 4] }) }, sixteen), /data_offsets \[8,4\] should be/);
  refused(rawFile({ w: entry({ data_offsets: [-16, 0] }) }, sixteen), /data_offsets \[-16,0\]/);
  refused(rawFile({ w: entry({ data_offsets: [0] }) }, sixteen), /data_offsets \[0\]/);
  refused(rawFile({ w: 7 }, sixteen), /tensor w: entry should be an object, got 7/);
  refused(
    rawFile(
      { a: entry({ shape: [2], data_offsets: [0, 8] }), b: entry({ shape: [2], data_offsets: [4, 12] }) },
      sixteen,
    ),
    /tensor b: data_offsets \[4,12\] overlap tensor a's \[0,8\]/,
  );
  refused(
    rawFile(
      { a: entry({ shape: [4], data_offsets: [0, 16] }), b: entry({ shape: [1], data_offsets: [8, 12] }) },
      sixteen,
    ),
    /overlap/,
  );
  refused(rawFile({ __metadata__: { format: 1 } }), /__metadata__.format should be a string, got 1/);
  refused(rawFile({ __metadata__: ['pt'] }), /__metadata__ should be an object/);
  const tooWide = new Uint8Array(8);
  new DataView(tooWide.buffer).setBigInt64(0, 2n ** 31n, true);
  refused(
    rawFile({ ids: { dtype: 'I64', shape: [1], data_offsets: [0, 8] } }, tooWide),
    /I64 value 2147483648 at index 0 does not fit in int32/,
  );
});

test('accepted edge cases: empty tensors share an offset, null metadata, unpadded headers', () => {
  const empties = rawFile(
    {
      __metadata__: null,
      e1: { dtype: 'F32', shape: [0], data_offsets: [0, 0] },
      w: { dtype: 'I32', shape: [1], data_offsets: [0, 4] },
      e2: { dtype: 'F16', shape: [3, 0], data_offsets: [4, 4] },
    },
    new Uint8Array([5, 0, 0, 0]),
  );
  const { metadata, tensors } = decodeSafetensors(empties);
  assert.deepEqual(metadata, {});
  assert.deepEqual([...tensors.get('w')!.data], [5]);
  assert.equal(tensors.get('e2')!.data.length, 0);
});

test('encoding refuses a length that does not fill the shape and a dtype that does not fit the data', () => {
  throwsCode(
    () => encodeSafetensors({ w: { data: new Float32Array(5), shape: [2, 3] } }),
    ErrorCodes.SAFETENSORS,
    /tensor w: 5 values do not fill shape \[2,3\] \(6 values\)/,
  );
  throwsCode(
    () => encodeSafetensors({ w: { data: new Int32Array(2), shape: [2], dtype: 'F16' } }),
    ErrorCodes.SAFETENSORS,
    /cannot be written from a Int32Array/,
  );
  throwsCode(
    () => encodeSafetensors({ w: { data: new Float32Array(2), shape: [2], dtype: 'I64' } }),
    ErrorCodes.SAFETENSORS,
    /cannot be written from a Float32Array/,
  );
  throwsCode(
    () => encodeSafetensors({ w: { data: new Float32Array(0), shape: [-1, 0] } }),
    ErrorCodes.SAFETENSORS,
    /shape \[-1,0\]/,
  );
  throwsCode(
    () => encodeSafetensors({ __metadata__: { data: new Float32Array(0), shape: [0] } }),
    ErrorCodes.SAFETENSORS,
    /cannot be named __metadata__/,
  );
});

test('fuzz: truncated and bit-flipped files either decode or throw LM_ERR_SAFETENSORS, never anything else', () => {
  const file = encodeSafetensors(
    {
      a: { data: randomFloats(7, 6), shape: [2, 3] },
      b: { data: Int32Array.from([1, -2]), shape: [2], dtype: 'I64' },
      c: { data: randomFloats(8, 4), shape: [4], dtype: 'BF16' },
    },
    { format: 'pt' },
  );
  const rng = new Rng(9);
  let refusedCount = 0;
  for (let trial = 0; trial < 3000; trial++) {
    let bytes: Uint8Array;
    if (trial % 3 === 0) {
      bytes = file.slice(0, Math.floor(rng.next() * file.length));
    } else {
      bytes = file.slice();
      for (let flips = 1 + Math.floor(rng.next() * 3); flips > 0; flips--)
        bytes[Math.floor(rng.next() * bytes.length)] ^= 1 << Math.floor(rng.next() * 8);
    }
    try {
      decodeSafetensors(bytes);
    } catch (err) {
      assert.ok(err instanceof LoraMeshError && err.code === ErrorCodes.SAFETENSORS, `trial ${trial}: ${err}`);
      refusedCount++;
    }
  }
  assert.ok(refusedCount > 1000, `only ${refusedCount} of 3000 corrupted files were refused`);
});
