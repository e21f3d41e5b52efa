/**
 * The coordinator's cache of compact bases: <cacheDir>/compact-bases/<key>.safetensors, keyed by
 * what the file is made from (the source files' sha256 by name, config.json included, the resolved
 * spec and the file layout's version), with <key>.json recording its sha256 and size. A run with
 * --base-format reuses an entry whose bytes still hash to the record, and otherwise quantizes the
 * model once (node/compact-file.ts: streamed, then renamed into place) and records it. Quantization
 * is deterministic, so a hit and a miss give the same bytes.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { sha256File } from '../../node/hash.ts';
import { writeCompactBaseFile } from '../../node/compact-file.ts';
import { parameterShapes } from '../../shared/model/causal-lm.ts';
import { COMPACT_BASE_FILE, COMPACT_BASE_TAG } from '../../shared/quant/compact-file.ts';
import { describeBaseSpec, type ResolvedBaseSpec } from '../../shared/quant/formats.ts';
import type { ModelDir, ModelFile } from './model-dir.ts';
import { writeAtomic } from './run-dir.ts';

/** What <key>.json records of a cached file. */
interface CacheRecord {
  sha256: string;
  bytes: number;
}

/** The cache folder's name inside the cache dir. */
export const COMPACT_CACHE_FOLDER = 'compact-bases';

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;

/**
 * The run's compact base file: the cached one when its bytes are intact, else quantized now.
 * Logs one line: the format, the file's size against float32, the time taken and hit or miss.
 */
export async function compactBaseFile(
  model: ModelDir,
  spec: ResolvedBaseSpec,
  cacheDir: string,
  log: (line: string) => void,
): Promise<ModelFile> {
  const sources = Object.fromEntries(model.files.map((f) => [f.name, f.sha256]));
  const key = createHash('sha256')
    .update(JSON.stringify([COMPACT_BASE_TAG, spec, sources]))
    .digest('hex');
  const folder = join(cacheDir, COMPACT_CACHE_FOLDER);
  const path = join(folder, `${key}.safetensors`);
  const recordPath = join(folder, `${key}.json`);
  const floatBytes = [...parameterShapes(model.config).values()].reduce((n, s) => n + 4 * s.reduce((a, b) => a * b), 0);
  const describe = (what: string, file: CacheRecord, started: number) =>
    log(
      `base: ${describeBaseSpec(spec)}, ${mb(file.bytes)} (float32 ${mb(floatBytes)}), ${what} in ` +
        `${((performance.now() - started) / 1000).toFixed(1)} s; sha256 ${file.sha256.slice(0, 12)}…, ${path}`,
    );
  const started = performance.now();
  const cached = await intactEntry(path, recordPath);
  if (cached) {
    describe('cache hit, verified', cached, started);
    return { name: COMPACT_BASE_FILE, path, ...cached };
  }
  if (existsSync(path)) log(`base: the cached ${path} does not match its record; quantizing again`);
  mkdirSync(folder, { recursive: true });
  const weightPaths = model.files.filter((f) => f.name.endsWith('.safetensors')).map((f) => f.path);
  const written = writeCompactBaseFile(model.config, weightPaths, spec, sources, path);
  writeAtomic(recordPath, `${JSON.stringify(written)}\n`);
  describe('cache miss, quantized', written, started);
  return { name: COMPACT_BASE_FILE, path, ...written };
}

/** The record of a cache entry whose file is there with the recorded size and sha256, else null. */
async function intactEntry(path: string, recordPath: string): Promise<CacheRecord | null> {
  if (!existsSync(path) || !existsSync(recordPath)) return null;
  let record: CacheRecord;
  try {
    record = JSON.parse(readFileSync(recordPath, 'utf8'));
  } catch {
    return null;
  }
  if (typeof record.sha256 !== 'string' || statSync(path).size !== record.bytes) return null;
  return (await sha256File(path)) === record.sha256 ? { sha256: record.sha256, bytes: record.bytes } : null;
}
