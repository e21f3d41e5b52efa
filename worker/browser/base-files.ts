/**
 * The base model in a browser tab: each weight file (or the run's one compact base file) is fetched
 * from the coordinator by sha256
 * (/files/<sha256>), verified with WebCrypto, and kept in Cache Storage under that URL, so a reload
 * or a later run on the same model reads it locally. Cached bytes are verified too: a corrupt or
 * truncated entry is dropped and fetched again, never used.
 */
import { checkModelConfig } from '../../shared/config.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import type { BaseWeights } from '../../shared/model/compact-base.ts';
import { WeightCollector } from '../../shared/model/weights.ts';
import { decodeCompactBase } from '../../shared/quant/compact-file.ts';
import { type BaseFile, type RunManifest, weightFiles } from '../../shared/protocol/messages.ts';

const CACHE_NAME = 'loramesh-base-files-v1';

export interface LoadProgress {
  file: string;
  /** bytes received so far and the file's size from the manifest */
  received: number;
  total: number;
  source: 'cache' | 'network';
}

export interface BaseFileHooks {
  log(line: string): void;
  progress(p: LoadProgress): void;
}

async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function openCache(log: (line: string) => void): Promise<Cache | null> {
  if (typeof caches === 'undefined') {
    log(
      'warning: Cache Storage is unavailable (the page is not a secure context): ' +
        'base files will be downloaded on every visit',
    );
    return null;
  }
  try {
    return await caches.open(CACHE_NAME);
  } catch (err) {
    log(`warning: Cache Storage cannot be opened (${(err as Error).message}): base files will not be cached`);
    return null;
  }
}

/** Reads a response body into one buffer of the manifest's size, reporting progress as it goes. */
async function readBody(
  res: Response,
  file: BaseFile,
  onProgress: (received: number) => void,
): Promise<Uint8Array<ArrayBuffer>> {
  if (!res.body) return new Uint8Array(await res.arrayBuffer());
  const out = new Uint8Array(file.bytes);
  const reader = res.body.getReader();
  let received = 0;
  let reported = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (received + value.length > out.length) {
      await reader.cancel();
      fail(ErrorCodes.HASH, `${file.name}: the server sent more than the manifest's ${file.bytes} bytes; refusing it`);
    }
    out.set(value, received);
    received += value.length;
    if (received - reported >= file.bytes / 100 || received === file.bytes) {
      reported = received;
      onProgress(received);
    }
  }
  return received === out.length ? out : out.subarray(0, received);
}

/** The verified bytes of one base file: from the cache when its entry is intact, else downloaded. */
async function verifiedBytes(
  file: BaseFile,
  cache: Cache | null,
  hooks: BaseFileHooks,
): Promise<Uint8Array<ArrayBuffer>> {
  if (!/^[0-9a-f]{64}$/.test(file.sha256))
    fail(
      ErrorCodes.FIELD,
      `manifest file ${JSON.stringify(file.name)} has sha256 ${JSON.stringify(file.sha256)}, expected 64 hex digits`,
    );
  const url = new URL(`/files/${file.sha256}`, location.origin).href;
  const cached = await cache?.match(url);
  if (cached) {
    const bytes = new Uint8Array(await cached.arrayBuffer());
    if (bytes.length === file.bytes && (await sha256Hex(bytes)) === file.sha256) {
      hooks.progress({ file: file.name, received: bytes.length, total: file.bytes, source: 'cache' });
      hooks.log(`${file.name}: read from the browser cache, sha256 verified`);
      return bytes;
    }
    hooks.log(`warning: the cached copy of ${file.name} is corrupt (${bytes.length} bytes); downloading it again`);
    await cache!.delete(url);
  }
  // no-store: Cache Storage keeps the one copy; the HTTP cache need not hold a second.
  const res = await fetch(url, { cache: 'no-store' });
  if (!res.ok) fail(ErrorCodes.HASH, `download of ${file.name} failed: HTTP ${res.status}`);
  const bytes = await readBody(res, file, (received) =>
    hooks.progress({ file: file.name, received, total: file.bytes, source: 'network' }),
  );
  const digest = await sha256Hex(bytes);
  if (digest !== file.sha256)
    fail(
      ErrorCodes.HASH,
      `${file.name}: downloaded sha256 ${digest} does not match the manifest's ${file.sha256}; refusing it`,
    );
  hooks.log(`${file.name}: downloaded ${bytes.length.toLocaleString('en')} bytes, sha256 verified`);
  if (cache) {
    try {
      await cache.put(
        url,
        new Response(bytes, {
          headers: { 'content-type': 'application/octet-stream', 'content-length': String(bytes.length) },
        }),
      );
    } catch (err) {
      hooks.log(
        `warning: could not cache ${file.name} (${(err as Error).message}); it will be downloaded again next time`,
      );
    }
  }
  return bytes;
}

/**
 * Fetches (or reads from cache) and verifies the run's weight files, returns the model's weights:
 * float32 tensors, or with the manifest's baseFormat the compact base file's CompactWeights.
 */
export async function loadBaseWeights(manifest: RunManifest, hooks: BaseFileHooks): Promise<BaseWeights> {
  if (typeof crypto === 'undefined' || !crypto.subtle) {
    fail(
      ErrorCodes.HASH,
      'WebCrypto is unavailable (the page is not a secure context: open it over https or on localhost), ' +
        'so base files cannot be verified',
    );
  }
  const config = checkModelConfig(manifest.model.config);
  const { baseFormat } = manifest.model;
  const cache = await openCache(hooks.log);
  const files = weightFiles(manifest.model);
  if (baseFormat)
    return decodeCompactBase(config, await verifiedBytes(files[0], cache, hooks), baseFormat, files[0].name);
  const collector = new WeightCollector(config);
  for (const file of files) collector.addFile(file.name, await verifiedBytes(file, cache, hooks));
  return collector.finish();
}
