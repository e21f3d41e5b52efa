/**
 * Compact base files on disk (the layout: shared/quant/compact-file.ts). Writing reads the source
 * checkpoint one tensor at a time (positional reads, one scratch buffer) and streams each tensor's
 * compact bytes to a temporary file that is renamed into place once complete and synced, so peak
 * memory is about one float32 tensor and its packed form; reading loads one file tensor at a time.
 */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import type { ModelConfig } from '../shared/config.ts';
import { decodeTensorData } from '../shared/formats/safetensors.ts';
import type { BaseWeights } from '../shared/model/compact-base.ts';
import { CheckpointIndex, floatValues } from '../shared/model/weights.ts';
import { readCompactBase, writeCompactBase } from '../shared/quant/compact-file.ts';
import type { BaseFormatSpec, ResolvedBaseSpec } from '../shared/quant/formats.ts';
import { readExactly, readHeader } from './load-weights.ts';

export interface WrittenFile {
  sha256: string;
  bytes: number;
}

/**
 * Quantizes the checkpoint `sourcePaths` (its safetensors files) into a compact base file at `out`,
 * written to `out.part-<pid>` first and renamed when whole (the folder is synced too). sourceSha256
 * names the source files by sha256 for the file's metadata. Returns the new file's sha256 and size.
 */
export function writeCompactBaseFile(
  config: ModelConfig,
  sourcePaths: string[],
  spec: BaseFormatSpec | ResolvedBaseSpec,
  sourceSha256: Record<string, string>,
  out: string,
): WrittenFile {
  const index = new CheckpointIndex(config);
  const fds = new Map<string, { fd: number; dataStart: number }>();
  const partial = `${out}.part-${process.pid}`;
  let outFd: number | null = null;
  try {
    for (const path of sourcePaths) {
      const source = { fd: openSync(path, 'r'), dataStart: 0 };
      fds.set(path, source); // closed below even when its header is refused
      const { entries, dataStart } = readHeader(source.fd, path);
      source.dataStart = dataStart;
      for (const [fileName, entry] of entries) index.add(path, fileName, entry);
    }
    index.finish();
    const spans = [...index.stored.values()].map(({ entry }) => entry.data_offsets[1] - entry.data_offsets[0]);
    const scratch = new Uint8Array(Math.max(0, ...spans)); // one buffer for every tensor read
    const valuesOf = (name: string): Float32Array => {
      const { file, fileName, entry } = index.stored.get(name)!;
      const { fd, dataStart } = fds.get(file)!;
      const [begin, end] = entry.data_offsets;
      return floatValues(decodeTensorData(fileName, entry, readExactly(fd, end - begin, dataStart + begin, scratch)));
    };
    const hash = createHash('sha256');
    let bytes = 0;
    const fd = openSync(partial, 'w');
    outFd = fd;
    writeCompactBase(config, spec, sourceSha256, valuesOf, (chunk) => {
      hash.update(chunk);
      for (let done = 0; done < chunk.byteLength; ) done += writeSync(fd, chunk, done);
      bytes += chunk.byteLength;
    });
    fsyncSync(fd);
    closeSync(fd);
    outFd = null;
    renameSync(partial, out);
    syncFolder(dirname(out));
    return { sha256: hash.digest('hex'), bytes };
  } catch (err) {
    if (outFd !== null) closeSync(outFd);
    rmSync(partial, { force: true });
    throw err;
  } finally {
    for (const { fd } of fds.values()) closeSync(fd);
  }
}

function syncFolder(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** A compact base file as FrozenBase takes it, checked throughout (readCompactBase), read a tensor at a time. */
export function loadCompactBaseFile(
  config: ModelConfig,
  path: string,
  expected?: BaseFormatSpec | ResolvedBaseSpec,
): BaseWeights {
  const fd = openSync(path, 'r');
  try {
    const header = readHeader(fd, path);
    return readCompactBase(
      config,
      header,
      (_, entry) =>
        readExactly(fd, entry.data_offsets[1] - entry.data_offsets[0], header.dataStart + entry.data_offsets[0]),
      expected,
      path,
    );
  } finally {
    closeSync(fd);
  }
}
