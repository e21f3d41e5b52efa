/** What the compact-base and model tests share: the formats they cover, random matrices, a random micro-batch. */
import type { BaseFormatSpec } from '../../shared/quant/formats.ts';
import { Rng } from '../../shared/rng.ts';
import type { MicroBatch } from '../../shared/train/micro-batch.ts';

/** Every format, with double quantization, and an int8 block that ends mid-row. */
export const COMPACT_SPECS: BaseFormatSpec[] = [
  { format: 'f32' },
  { format: 'f16' },
  { format: 'bf16' },
  { format: 'int8' },
  { format: 'nf4' },
  { format: 'nf4', doubleQuant: true, doubleQuantBlockSize: 16 },
  { format: 'int8', blockSize: 12 },
];

/** n values, roughly normal (a sum of three uniforms) times scale. */
export function gaussian(n: number, seed: number, scale = 1): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => scale * (rng.next() + rng.next() + rng.next() - 1.5));
}

/**
 * Two sequences of six random tokens, each predicting the next; the last position of each masked out
 * unless maskLast is false.
 */
export function randomMicroBatch(vocab: number, seed: number, { dropoutSeed = 0, maskLast = true } = {}): MicroBatch {
  const [batch, time] = [2, 6];
  const rng = new Rng(seed);
  const n = batch * time;
  const ids = Int32Array.from({ length: n }, () => Math.floor(rng.next() * vocab));
  return {
    batch,
    time,
    dropoutSeed,
    inputIds: ids,
    targets: Int32Array.from({ length: n }, (_, i) => ids[(i + 1) % n]),
    lossMask: Float32Array.from({ length: n }, (_, i) => (maskLast && i % time === time - 1 ? 0 : 1)),
  } as MicroBatch;
}

/** A LoRA state for `spec` with N(0, 0.3²) entries from rng: B non-zero, so the branch shows in every output. */
export function randomAdapter(
  spec: readonly { name: string; shape: readonly number[] }[],
  rng: Rng,
): Map<string, Float32Array> {
  return new Map(
    spec.map((t) => [t.name, Float32Array.from({ length: t.shape[0] * t.shape[1] }, () => 0.3 * rng.normal())]),
  );
}
