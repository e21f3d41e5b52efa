// The compact base file (shared/quant/compact-file.ts): written tensor by tensor and read back, every
// format gives back exactly the packed matrices quantizeMatrix makes and the float32 tensors as they
// were, bit for bit, for Llama (untied) and GPT-2 (Conv1D, tied); the header's size is known before
// any tensor is quantized; a file that is not one, holds another format or model, or lacks, adds or
// misshapes a tensor is refused with a code naming it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import '../../helpers/backend.ts';
import type { ModelConfig } from '../../../shared/config.ts';
import { ErrorCodes } from '../../../shared/errors.ts';
import {
  encodeSafetensors,
  encodeSafetensorsHeader,
  type HeaderEntry,
  readSafetensorsHeader,
} from '../../../shared/formats/safetensors.ts';
import { packTensor } from '../../../shared/model/compact-base.ts';
import { CompactWeight } from '../../../shared/model/compact-linear.ts';
import {
  COMPACT_BASE_TAG,
  decodeCompactBase,
  planCompactFile,
  writeCompactBase,
} from '../../../shared/quant/compact-file.ts';
import { type BaseFormatSpec, wordBytes } from '../../../shared/quant/formats.ts';
import { blockScales } from '../../../shared/quant/quantize.ts';
import { throwsCode } from '../../helpers/assert.ts';
import { randomArrays, tinyConfig, tinyGpt2Config } from '../../helpers/tiny-model.ts';

const SPECS: BaseFormatSpec[] = [
  { format: 'f32' },
  { format: 'f16' },
  { format: 'bf16' },
  { format: 'int8', blockSize: 8 },
  { format: 'int8', blockSize: 12 }, // the last block of a row padded
  { format: 'nf4', blockSize: 8 },
  { format: 'nf4', blockSize: 8, doubleQuant: true, doubleQuantBlockSize: 4 },
];
const CONFIGS: [string, ModelConfig][] = [
  ['llama', tinyConfig()],
  ['gpt2', tinyGpt2Config()],
];
const SOURCE = { 'model.safetensors': 'ab'.repeat(32) };

/** A compact file written through writeCompactBase, its chunks joined, and how often it asked for values. */
function writeFile(config: ModelConfig, spec: BaseFormatSpec, seed = 1) {
  const arrays = randomArrays(config, seed);
  const chunks: Uint8Array[] = [];
  const asked: string[] = [];
  const plan = writeCompactBase(
    config,
    spec,
    SOURCE,
    (name) => {
      asked.push(name);
      return arrays.get(name)!.data;
    },
    (chunk) => chunks.push(chunk.slice()),
  );
  return { bytes: Buffer.concat(chunks), plan, arrays, asked };
}

const same = (a: ArrayBufferView, b: ArrayBufferView) =>
  Buffer.compare(
    Buffer.from(a.buffer, a.byteOffset, a.byteLength),
    Buffer.from(b.buffer, b.byteOffset, b.byteLength),
  ) === 0;

test('every format round-trips bit for bit, streamed one tensor at a time in model order', () => {
  for (const [label, config] of CONFIGS)
    for (const spec of SPECS) {
      const what = `${label} ${JSON.stringify(spec)}`;
      const { bytes, plan, arrays, asked } = writeFile(config, spec);
      assert.equal(bytes.length, plan.fileBytes, `${what}: the planned size`);
      assert.deepEqual(asked, [...arrays.keys()], `${what}: each tensor read once, in model order`);
      assert.ok(same(bytes, writeFile(config, spec).bytes), `${what}: equal inputs, equal bytes`);
      const header = readSafetensorsHeader(bytes);
      assert.equal(header.metadata.loramesh, COMPACT_BASE_TAG);
      assert.deepEqual(JSON.parse(header.metadata.source_sha256), SOURCE);
      for (const entry of header.entries.values()) assert.equal(entry.data_offsets[0] % 4, 0, `${what}: aligned`);
      const weights = decodeCompactBase(config, bytes, spec);
      assert.deepEqual([...weights.keys()], [...arrays.keys()]);
      for (const [name, { data, shape }] of arrays) {
        const loaded = weights.get(name)!;
        const packed = packTensor(config, name, data, shape, spec);
        if (!packed) {
          assert.ok(!(loaded instanceof CompactWeight), `${what}: ${name} stays float32`);
          assert.ok(same(loaded.dataSync() as Float32Array, data), `${what}: ${name} values`);
          continue;
        }
        assert.ok(loaded instanceof CompactWeight, `${what}: ${name} is compact`);
        assert.deepEqual(loaded.shape, shape);
        if (loaded.codes && loaded.scales) {
          assert.ok(same(wordBytes(loaded.codes.dataSync() as Int32Array), packed.data), `${what}: ${name} codes`);
          assert.ok(same(loaded.scales.dataSync() as Float32Array, blockScales(packed)), `${what}: ${name} scales`);
        } else {
          assert.ok(same(loaded.host!.data, packed.data) && same(loaded.host!.scales, packed.scales));
          if (packed.doubleQuant) {
            assert.ok(same(loaded.host!.doubleQuant!.codes, packed.doubleQuant.codes));
            assert.ok(same(loaded.host!.doubleQuant!.scales, packed.doubleQuant.scales));
            assert.equal(loaded.host!.doubleQuant!.offset, packed.doubleQuant.offset);
          }
        }
      }
      for (const w of weights.values()) w.dispose();
    }
});

test('the header is known before any tensor: plan == what is written, nf4 a fraction of float32', () => {
  const config = tinyConfig({ hidden_size: 64, intermediate_size: 128 });
  const plan = planCompactFile(config, { format: 'nf4' }, SOURCE);
  const { bytes } = writeFile(config, { format: 'nf4' });
  assert.ok(same(bytes.subarray(0, plan.header.length), plan.header));
  const floatBytes = [...randomArrays(config, 1).values()].reduce((n, a) => n + 4 * a.data.length, 0);
  assert.ok(plan.fileBytes < 0.2 * floatBytes, `${plan.fileBytes} bytes for ${floatBytes} float32 bytes`);
});

/** The file with its header changed by `edit` (entries and metadata), the data section as it was. */
function rewrite(
  bytes: Uint8Array,
  edit: (entries: Map<string, HeaderEntry>, metadata: Record<string, string>) => void,
): Uint8Array {
  const { entries, metadata, dataStart } = readSafetensorsHeader(bytes);
  edit(entries, metadata);
  return Buffer.concat([encodeSafetensorsHeader(entries, metadata), bytes.subarray(dataStart)]);
}

test('a damaged or mismatching compact file is refused with a code naming what is wrong', () => {
  const config = tinyConfig();
  const spec: BaseFormatSpec = { format: 'int8', blockSize: 8 };
  const { bytes } = writeFile(config, spec);
  const refused = (file: Uint8Array, code: string, message: RegExp, expected: BaseFormatSpec = spec) =>
    throwsCode(() => decodeCompactBase(config, file, expected, 'base.safetensors'), code, message);
  const q = 'model.layers.0.self_attn.q_proj.weight';

  refused(bytes.subarray(0, bytes.length - 3), ErrorCodes.SAFETENSORS, /data_offsets/);
  refused(
    encodeSafetensors(Object.fromEntries(randomArrays(config, 1))),
    ErrorCodes.MODEL,
    /base\.safetensors is not a loramesh compact base/,
  );
  refused(bytes, ErrorCodes.MODEL, /holds int8\/8; the run's base format is nf4\/64/, { format: 'nf4' });
  throwsCode(
    () => decodeCompactBase(tinyConfig({ intermediate_size: 24 }), bytes),
    ErrorCodes.MODEL,
    /__metadata__\.shapes does not match/,
  );
  refused(
    rewrite(bytes, (e) => e.delete(`${q}.qscales`)),
    ErrorCodes.MODEL,
    new RegExp(`tensor ${q}.qscales is missing`),
  );
  refused(
    rewrite(bytes, (e) => e.set('extra', { dtype: 'F32', shape: [0], data_offsets: [0, 0] })),
    ErrorCodes.MODEL,
    /tensor extra is not part of this model's compact base/,
  );
  refused(
    rewrite(bytes, (e) => {
      const entry = e.get(`${q}.qdata`)!;
      e.set(`${q}.qdata`, { ...entry, dtype: 'F32', shape: [entry.shape[0] / 4] });
    }),
    ErrorCodes.MODEL,
    new RegExp(`tensor ${q}.qdata is F32 \\[64\\]; expected U8 \\[256\\]`),
  );
  refused(
    rewrite(bytes, (_, m) => {
      m.spec = JSON.stringify({ format: 'int8', blockSize: 3 });
    }),
    ErrorCodes.CONFIG,
    /__metadata__\.spec\.blockSize should be a multiple of 4/,
  );
  // a NaN block scale
  const nan = bytes.slice();
  const { entries, dataStart } = readSafetensorsHeader(nan);
  new DataView(nan.buffer).setFloat32(dataStart + entries.get(`${q}.qscales`)!.data_offsets[0], Number.NaN, true);
  refused(nan, ErrorCodes.NON_FINITE, new RegExp(`${q}.qscales\\[0\\] is NaN`));
});
