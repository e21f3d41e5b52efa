/**
 * Loads safetensors files from disk one tensor at a time (positional reads), so peak memory stays
 * near one copy of the weights plus the largest tensor: the file is never held whole.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../shared/config.ts';
import { ErrorCodes, fail } from '../shared/errors.ts';
import { decodeTensorData, readSafetensorsHeader, type SafetensorsHeader } from '../shared/formats/safetensors.ts';
import { WeightCollector, type StoredTensor } from '../shared/model/weights.ts';

export interface LoadedWeights {
  weights: Map<string, tf.Tensor>;
  stored: Map<string, StoredTensor>;
}

/** length bytes at position, into `into` (a scratch buffer) when given, else a fresh array. */
export function readExactly(fd: number, length: number, position: number, into?: Uint8Array): Uint8Array {
  const out = into ? into.subarray(0, length) : new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, out, done, length - done, position + done);
    if (n === 0) fail(ErrorCodes.SAFETENSORS, `file ended ${length - done} bytes early`);
    done += n;
  }
  return out;
}

/** The checked header of an open safetensors file. */
export function readHeader(fd: number, path: string): SafetensorsHeader {
  const size = fstatSync(fd).size;
  if (size < 8) fail(ErrorCodes.SAFETENSORS, `${path}: ${size} bytes is too short for a safetensors file`);
  const headerLength = Number(new DataView(readExactly(fd, 8, 0).buffer).getBigUint64(0, true));
  if (headerLength > size - 8)
    fail(ErrorCodes.SAFETENSORS, `${path}: header length ${headerLength} exceeds the file (${size} bytes)`);
  return readSafetensorsHeader(readExactly(fd, 8 + headerLength, 0), size);
}

export function loadSafetensorsFiles(config: ModelConfig, paths: string[]): LoadedWeights {
  const collector = new WeightCollector(config);
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
  return { weights: collector.finish(), stored: collector.stored };
}
