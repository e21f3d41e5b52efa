/**
 * Loads safetensors files from disk one tensor at a time (positional reads), so peak memory stays
 * near one copy of the weights plus the largest tensor: the file is never held whole.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../shared/config.ts';
import { ErrorCodes, fail } from '../shared/errors.ts';
import { decodeTensorData, readSafetensorsHeader } from '../shared/formats/safetensors.ts';
import { type BaseWeights, compactTensor } from '../shared/model/compact-base.ts';
import { WeightCollector, type StoredTensor } from '../shared/model/weights.ts';
import { type BaseFormatSpec, resolveBaseSpec } from '../shared/quant/formats.ts';

export interface LoadedWeights {
  weights: Map<string, tf.Tensor>;
  stored: Map<string, StoredTensor>;
}

function readExactly(fd: number, length: number, position: number, into?: Uint8Array): Uint8Array {
  const out = into ? into.subarray(0, length) : new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, out, done, length - done, position + done);
    if (n === 0) fail(ErrorCodes.SAFETENSORS, `file ended ${length - done} bytes early`);
    done += n;
  }
  return out;
}

function readHeader(fd: number, path: string) {
  const size = fstatSync(fd).size;
  if (size < 8) fail(ErrorCodes.SAFETENSORS, `${path}: ${size} bytes is too short for a safetensors file`);
  const headerLength = Number(new DataView(readExactly(fd, 8, 0).buffer).getBigUint64(0, true));
  if (headerLength > size - 8)
    fail(ErrorCodes.SAFETENSORS, `${path}: header length ${headerLength} exceeds the file (${size} bytes)`);
  return readSafetensorsHeader(readExactly(fd, 8 + headerLength, 0), size);
}

/** Reads every tensor of the files into the collector, one at a time. */
function readFiles(collector: WeightCollector, paths: string[]): void {
  for (const path of paths) {
    const fd = openSync(path, 'r');
    try {
      const { entries, dataStart } = readHeader(fd, path);
      // One scratch buffer for the file's largest tensor: each tensor is read into it and copied
      // straight into the backend, so no per-tensor garbage piles up before the GC runs.
      const largest = Math.max(0, ...[...entries.values()].map((e) => e.data_offsets[1] - e.data_offsets[0]));
      const scratch = new Uint8Array(largest);
      for (const [fileName, entry] of entries) {
        const [begin, end] = entry.data_offsets;
        collector.add(path, fileName, entry, () =>
          decodeTensorData(fileName, entry, readExactly(fd, end - begin, dataStart + begin, scratch)),
        );
      }
    } finally {
      closeSync(fd);
    }
  }
}

export function loadSafetensorsFiles(config: ModelConfig, paths: string[]): LoadedWeights {
  const collector = new WeightCollector(config);
  readFiles(collector, paths);
  return { weights: collector.finish(), stored: collector.stored };
}

/**
 * The checkpoint as a compact base in `spec`, each matrix quantized as it is read: the float32
 * model is never in memory whole (peak: the compact base plus the largest tensor, widened).
 */
export function loadCompactBase(config: ModelConfig, paths: string[], spec: BaseFormatSpec): BaseWeights {
  const resolved = resolveBaseSpec(spec);
  const collector = new WeightCollector(config, (name, values, shape) =>
    compactTensor(config, name, values, shape, resolved),
  );
  readFiles(collector, paths);
  return collector.finishBase();
}
