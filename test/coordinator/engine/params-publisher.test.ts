// The parameters publisher: with f32 down every version is a keyframe; with a lossy down codec the
// first is and the rest are deltas from the previous version, and a worker applying the frames (or
// joining with a keyframe) holds exactly what held() says, the copy trusted recomputations use.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_LORA } from '../../../shared/config.ts';
import { decodeMessage } from '../../../shared/protocol/codec.ts';
import { flattenTensors, type RunManifest, unpackFloats } from '../../../shared/protocol/messages.ts';
import { F32, type CodecSpec } from '../../../shared/protocol/wire-codec.ts';
import { Rng } from '../../../shared/rng.ts';
import { ParamsPublisher } from '../../../coordinator/engine/params-publisher.ts';
import { tinyConfig } from '../../helpers/tiny-model.ts';

const SHAPES: { name: string; shape: [number, number] }[] = [
  { name: 'm.lora_A', shape: [4, 16] },
  { name: 'm.lora_B', shape: [16, 4] },
];
const VALUES = 128;
const manifestWith = (down: CodecSpec): RunManifest => ({
  runId: 'publisher-test',
  model: { config: tinyConfig(), files: [] },
  lora: DEFAULT_LORA,
  adapter: SHAPES,
  wire: { up: F32, down },
});

function* adapters(seed: number) {
  const rng = new Rng(seed);
  const flat = Float32Array.from({ length: VALUES }, () => 0.02 * rng.normal());
  for (;;) {
    for (let i = 0; i < VALUES; i++) flat[i] += 1e-3 * rng.normal();
    yield new Map(SHAPES.map(({ name }, t) => [name, flat.slice(64 * t, 64 * (t + 1))]));
  }
}

/** A worker's copy, updated as shared/worker-loop.ts does: keyframes replace it, deltas are added. */
function apply(flat: Float32Array | null, frame: Uint8Array, down: CodecSpec): Float32Array {
  const m = decodeMessage(frame);
  assert.ok(m.type === 'params');
  const values = unpackFloats(m.tensors, m.deltaFrom === undefined ? F32 : down, VALUES, 'params');
  if (m.deltaFrom === undefined) return values.slice();
  assert.equal(m.deltaFrom, m.paramVersion - 1);
  for (let i = 0; i < VALUES; i++) flat![i] += values[i];
  return flat!;
}

const bits = (x: Float32Array) => [...new Uint32Array(x.buffer, x.byteOffset, x.length)];

for (const down of [F32, { name: 'bf16' }, { name: 'int8', blockSize: 16 }] as CodecSpec[]) {
  test(`publisher (${down.name} down): workers applying the frames hold held(), bit for bit`, () => {
    const manifest = manifestWith(down);
    const publisher = new ParamsPublisher(manifest);
    assert.equal(publisher.keyframe(), null);
    const next = adapters(3);
    let worker: Float32Array | null = null;
    let joiner: Float32Array | null = null;
    for (let v = 0; v < 20; v++) {
      const adapter = next.next().value!;
      const { frame } = publisher.publish(v, adapter);
      assert.equal(publisher.version, v);
      const m = decodeMessage(frame);
      assert.equal(m.type === 'params' && m.deltaFrom !== undefined, down.name !== 'f32' && v > 0, 'a delta');
      worker = apply(worker, frame, down);
      if (v === 10) joiner = apply(null, publisher.keyframe()!.frame, down);
      else if (v > 10) joiner = apply(joiner, frame, down);
      const held = flattenTensors(publisher.held(), SHAPES);
      assert.deepEqual(bits(worker), bits(held), `version ${v}`);
      if (joiner) assert.deepEqual(bits(joiner), bits(held), `joiner, version ${v}`);
      if (down.name === 'f32') assert.deepEqual(bits(held), bits(flattenTensors(adapter, SHAPES)), 'f32 is exact');
    }
  });
}

test("with f32 down each version is written over the workers' copy in place, and earlier frames and held() copies keep their values", () => {
  const publisher = new ParamsPublisher(manifestWith(F32));
  const versions = adapters(5);
  const first = versions.next().value!;
  const frame1 = publisher.publish(0, first).frame;
  const held1 = publisher.held();
  const second = versions.next().value!;
  const frame2 = publisher.publish(1, second).frame;
  assert.notEqual(frame1.buffer, frame2.buffer);
  assert.deepEqual([...apply(null, frame1, F32)], [...flattenTensors(first, SHAPES)]);
  assert.deepEqual([...apply(null, frame2, F32)], [...flattenTensors(second, SHAPES)]);
  assert.deepEqual([...held1.get('m.lora_A')!], [...first.get('m.lora_A')!]);
  assert.deepEqual([...publisher.held().get('m.lora_B')!], [...second.get('m.lora_B')!]);
  assert.deepEqual([...apply(null, publisher.keyframe()!.frame, F32)], [...flattenTensors(second, SHAPES)]);
});
