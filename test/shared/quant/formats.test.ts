// Base-format specs (defaults, refusals), exact byte counts and the int32 word view.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes } from '../../../shared/errors.ts';
import {
  BASE_FORMATS,
  checkPacked,
  DEFAULT_BASE_BLOCK,
  DEFAULT_DOUBLE_QUANT_BLOCK,
  describeBaseSpec,
  int32Words,
  matrixLayout,
  packedBytes,
  type PackedMatrix,
  packedSize,
  resolveBaseSpec,
  wordBytes,
} from '../../../shared/quant/formats.ts';
import { quantizeMatrix } from '../../../shared/quant/quantize.ts';
import { throwsCode } from '../../helpers/assert.ts';

test('defaults: 64-value blocks for int8 and nf4, double quantization off, its blocks 256', () => {
  assert.deepEqual(BASE_FORMATS, ['f32', 'f16', 'bf16', 'int8', 'nf4']);
  assert.equal(DEFAULT_BASE_BLOCK, 64);
  assert.equal(DEFAULT_DOUBLE_QUANT_BLOCK, 256);
  assert.deepEqual(resolveBaseSpec({ format: 'f16' }), { format: 'f16' });
  assert.deepEqual(resolveBaseSpec({ format: 'int8' }), { format: 'int8', blockSize: 64 });
  assert.deepEqual(resolveBaseSpec({ format: 'nf4' }), { format: 'nf4', blockSize: 64, doubleQuant: false });
  assert.deepEqual(resolveBaseSpec({ format: 'nf4', doubleQuant: true }), {
    format: 'nf4',
    blockSize: 64,
    doubleQuant: true,
    doubleQuantBlockSize: 256,
  });
  // A resolved spec resolves to itself, so resolved and raw specs go everywhere a spec does.
  for (const raw of [{ format: 'bf16' }, { format: 'int8', blockSize: 32 }, { format: 'nf4', doubleQuant: true }]) {
    const once = resolveBaseSpec(raw);
    assert.deepEqual(resolveBaseSpec(once), once);
  }
});

test('describeBaseSpec names the format and its options', () => {
  assert.equal(describeBaseSpec({ format: 'f32' }), 'f32');
  assert.equal(describeBaseSpec({ format: 'int8' }), 'int8/64');
  assert.equal(describeBaseSpec({ format: 'nf4', blockSize: 128 }), 'nf4/128');
  assert.equal(describeBaseSpec({ format: 'nf4', doubleQuant: true, doubleQuantBlockSize: 128 }), 'nf4/64+dq128');
});

test('a bad spec fails with CONFIG, naming the field, the value and what was expected', () => {
  const bad: [unknown, RegExp][] = [
    [null, /base format should be an object.*got null/],
    ['nf4', /base format should be an object.*got "nf4"/],
    [{ format: 'q4' }, /base format\.format should be one of f32, f16, bf16, int8, nf4, got "q4"/],
    [{}, /base format\.format should be one of .*got undefined/],
    [{ format: 'nf4', blocksize: 64 }, /unknown field "blocksize"; expected format, blockSize, doubleQuant/],
    [{ format: 'f16', blockSize: 64 }, /base format\.blockSize applies only to int8 and nf4, got 64 for f16/],
    [{ format: 'int8', doubleQuant: true }, /base format\.doubleQuant applies only to nf4, got true for int8/],
    [{ format: 'int8', blockSize: 30 }, /blockSize should be a multiple of 4 in \[4, 65536\] for int8, got 30/],
    [{ format: 'int8', blockSize: 0 }, /blockSize should be a multiple of 4 .* got 0/],
    [{ format: 'nf4', blockSize: 60 }, /blockSize should be a multiple of 8 in \[8, 65536\] for nf4, got 60/],
    [{ format: 'nf4', blockSize: 1 << 17 }, /multiple of 8 in \[8, 65536\] for nf4, got 131072/],
    [{ format: 'nf4', blockSize: '64' }, /multiple of 8 .* got "64"/],
    [{ format: 'nf4', doubleQuant: 'yes' }, /doubleQuant should be true or false, got "yes"/],
    [{ format: 'nf4', doubleQuantBlockSize: 128 }, /doubleQuantBlockSize applies only to nf4 with doubleQuant/],
    [{ format: 'nf4', doubleQuant: true, doubleQuantBlockSize: 0 }, /doubleQuantBlockSize should be an integer/],
    [{ format: 'nf4', doubleQuant: true, doubleQuantBlockSize: 2.5 }, /in \[1, 65536\], got 2\.5/],
  ];
  for (const [spec, message] of bad) throwsCode(() => resolveBaseSpec(spec), ErrorCodes.CONFIG, message);
  throwsCode(
    () => resolveBaseSpec({ format: 'x' }, 'model.baseFormat'),
    ErrorCodes.CONFIG,
    /^.*model\.baseFormat\.format/,
  );
});

test('packedBytes: the exact compact size, padding included', () => {
  const cases: [object, number, number, number][] = [
    [{ format: 'f32' }, 3, 5, 60],
    [{ format: 'f16' }, 3, 5, 32], // 30 bytes of halves + 2 of padding to a whole word
    [{ format: 'bf16' }, 2, 4, 16],
    [{ format: 'int8' }, 2, 64, 2 * 64 + 4 * 2],
    [{ format: 'int8' }, 5, 150, 5 * 192 + 4 * 15], // 3 blocks a row, the last padded from 22 to 64
    [{ format: 'int8', blockSize: 4 }, 1, 1, 4 + 4],
    [{ format: 'nf4' }, 1, 1, 32 + 4],
    [{ format: 'nf4' }, 5, 150, (5 * 192) / 2 + 4 * 15],
    [{ format: 'nf4', doubleQuant: true }, 5, 150, 480 + 16 + 4 + 4], // 15 codes → 16 bytes, 1 scale, offset
    [{ format: 'nf4', doubleQuant: true, doubleQuantBlockSize: 4 }, 5, 150, 480 + 16 + 4 * 4 + 4],
  ];
  for (const [spec, rows, cols, bytes] of cases)
    assert.equal(packedBytes(spec as never, rows, cols), bytes, `${JSON.stringify(spec)} [${rows}, ${cols}]`);
  // A Qwen2-0.5B MLP matrix [4864, 896]: 4 bits plus one float32 per 64 values = 4.5 bits a value;
  // double quantization brings the scales to 8 bits per 64 (+ a float32 per 256 blocks).
  const [rows, cols] = [4864, 896];
  assert.equal(packedBytes({ format: 'nf4' }, rows, cols), (rows * cols) / 2 + (4 * rows * cols) / 64);
  const blocks = (rows * cols) / 64;
  assert.equal(
    packedBytes({ format: 'nf4', doubleQuant: true }, rows, cols),
    (rows * cols) / 2 + blocks + 4 * Math.ceil(blocks / 256) + 4,
  );
  assert.equal(packedBytes({ format: 'int8' }, rows, cols), rows * cols + (4 * rows * cols) / 64);
  assert.equal(packedBytes({ format: 'bf16' }, rows, cols), 2 * rows * cols);
});

test('packedSize of a real packed matrix equals packedBytes, for every format and odd shapes', () => {
  const specs = [
    { format: 'f32' },
    { format: 'f16' },
    { format: 'bf16' },
    { format: 'int8' },
    { format: 'int8', blockSize: 4 },
    { format: 'nf4' },
    { format: 'nf4', blockSize: 8 },
    { format: 'nf4', doubleQuant: true },
    { format: 'nf4', blockSize: 8, doubleQuant: true, doubleQuantBlockSize: 3 },
  ] as const;
  for (const spec of specs)
    for (const [rows, cols] of [
      [1, 1],
      [1, 7],
      [3, 65],
      [7, 3],
      [2, 128],
    ]) {
      const values = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i + 1));
      const p = quantizeMatrix(values, rows, cols, spec);
      assert.equal(packedSize(p), packedBytes(spec, rows, cols), `${describeBaseSpec(spec)} [${rows}, ${cols}]`);
      assert.equal(p.data.byteLength % 4, 0, 'data is whole words');
      assert.deepEqual(checkPacked(p), matrixLayout(spec, rows, cols));
    }
});

test('a bad shape fails with SHAPE', () => {
  for (const [rows, cols] of [
    [0, 4],
    [4, 0],
    [-1, 4],
    [1.5, 4],
    [4, Number.NaN],
  ])
    throwsCode(() => packedBytes({ format: 'nf4' }, rows, cols), ErrorCodes.SHAPE, /should be a positive integer/);
});

test('int32Words reads the bytes as little-endian words, sharing memory when aligned; wordBytes inverts it', () => {
  const bytes = Uint8Array.of(0x01, 0x02, 0x03, 0x84, 0xff, 0xff, 0xff, 0xff);
  const words = int32Words(bytes);
  assert.deepEqual(Array.from(words), [0x84030201 | 0, -1]);
  bytes[0] = 0x05;
  assert.equal(words[0] & 0xff, 0x05, 'a view on a little-endian machine, not a copy');
  assert.deepEqual(wordBytes(words), bytes);
  // An unaligned window is copied, with the same values.
  const buffer = new Uint8Array(12);
  buffer.set(bytes, 1);
  assert.deepEqual(Array.from(int32Words(buffer.subarray(1, 9))), Array.from(words));
  throwsCode(() => int32Words(new Uint8Array(6)), ErrorCodes.SHAPE, /multiple of 4 bytes, got 6/);
});

test('checkPacked refuses a packed matrix whose arrays do not fit its layout', () => {
  const good = quantizeMatrix(new Float32Array(2 * 70).fill(0.5), 2, 70, { format: 'nf4', doubleQuant: true });
  const variants: [Partial<PackedMatrix>, RegExp][] = [
    [{ data: good.data.subarray(4) }, /data should be a Uint8Array of 128, got Uint8Array\(124\)/],
    [{ scales: new Float32Array(4) }, /scales should be a Float32Array of 0/],
    [{ doubleQuant: undefined }, /should carry doubleQuant/],
    [{ doubleQuant: { ...good.doubleQuant!, scales: new Float32Array(2) } }, /doubleQuant\.scales should be/],
    [{ doubleQuant: { ...good.doubleQuant!, offset: 0.1 } }, /offset should be a float32 number, got 0\.1/],
    [{ rows: 3 }, /data should be a Uint8Array of 192/],
  ];
  for (const [change, message] of variants)
    throwsCode(() => checkPacked({ ...good, ...change }), ErrorCodes.SHAPE, message);
  throwsCode(() => checkPacked({ ...good, spec: { format: 'nf4', blockSize: 12 } as never }), ErrorCodes.CONFIG);
});
