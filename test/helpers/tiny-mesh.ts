// A two-tensor adapter, its run manifest and six one-sequence micro-batches: the fixture of the
// socket-free engine tests (mesh, result gate).
import { DEFAULT_LORA } from '../../shared/config.ts';
import type { RunManifest } from '../../shared/protocol/messages.ts';
import { F32 } from '../../shared/protocol/wire-codec.ts';
import { type MicroBatch, packMicroBatch } from '../../shared/train/micro-batch.ts';
import { tinyConfig } from './tiny-model.ts';

export const SHAPES: [string, [number, number]][] = [
  ['m.lora_A', [2, 3]],
  ['m.lora_B', [3, 2]],
];
/** adapter values in all */
export const VALUES = 12;

export const tinyManifest = (runId: string): RunManifest => ({
  runId,
  model: { config: tinyConfig(), files: [] },
  lora: DEFAULT_LORA,
  adapter: SHAPES.map(([name, shape]) => ({ name, shape })),
  wire: { up: F32, down: F32 },
});

export const microBatches: MicroBatch[] = Array.from({ length: 6 }, (_, i) =>
  packMicroBatch([{ tokens: [1, 2, 3, 4 + i], lossWeights: [0, 1, 1, 1] }], 0, i),
);

/** The honest gradient of micro-batch i: a fixed, distinct vector. */
export const honest = (i: number) => Float32Array.from({ length: VALUES }, (_, k) => Math.sin(i * 13 + k) * 0.1);
