/**
 * The Node worker: picks a tfjs backend, connects to a coordinator over WebSocket (reconnecting
 * with jittered exponential backoff, shared/protocol/reconnect.ts; a refusal that cannot change
 * ends it with LoraMeshError instead, see shared/protocol/refusal.ts), fetches the base model over
 * HTTP once (sha256-verified, cached on disk by content hash) and runs the neutral worker loop from
 * shared/.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream, existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { NODE_CLIENT } from '../node/ws-client.ts';
import { checkModelConfig } from '../shared/config.ts';
import { ErrorCodes, fail, LoraMeshError } from '../shared/errors.ts';
import { sha256File } from '../node/hash.ts';
import { loadCompactBaseFile } from '../node/compact-file.ts';
import { loadSafetensorsFiles } from '../node/load-weights.ts';
import type { BaseWeights } from '../shared/model/compact-base.ts';
import { type BaseFile, type RunManifest, weightFiles } from '../shared/protocol/messages.ts';
import { asBytes } from '../shared/protocol/codec.ts';
import { cleanPeerText } from '../shared/protocol/peer-text.ts';
import { reconnectDelayMs } from '../shared/protocol/reconnect.ts';
import { refusalFromClose, refusalFromHttp, type Refusal } from '../shared/protocol/refusal.ts';
import { WorkerSession } from '../shared/worker-loop.ts';
import { WASM_HEAP_MAX_BYTES, wasmHeapRefusal } from '../shared/model/memory-plan.ts';
import { initBackend, type BackendName } from '../node/backend.ts';
import { selectArithmetic, supportedArithmetic } from '../kernels/arithmetic.ts';
import { faultHooks } from './faults.ts';

export interface NodeWorkerOptions {
  url: string;
  backend: BackendName;
  cacheDir: string;
  name?: string;
  token?: string;
  /** give up after this many failed connection attempts in a row (default: never) */
  maxRetries?: number;
  log?: (line: string) => void;
}

const headerValue = (h: string | string[] | undefined) => (Array.isArray(h) ? h[0] : h);

/** http(s) origin of the coordinator that serves ws(s)://host/ws */
const httpOrigin = (wsUrl: string) => new URL(wsUrl.replace(/^ws/, 'http')).origin;

/**
 * The path of a verified local copy of `file`: the cache entry if its sha256 matches, else a fresh
 * download streamed to disk while hashing (never held in memory whole), renamed into the cache
 * only when the hash matches the manifest.
 */
export async function fetchVerified(
  origin: string,
  file: BaseFile,
  cacheDir: string,
  log: (l: string) => void,
): Promise<string> {
  const cached = join(cacheDir, file.sha256);
  if (existsSync(cached)) {
    if ((await sha256File(cached)) === file.sha256) return cached;
    log(`cache entry for ${file.name} is corrupt; downloading again`);
  }
  const res = await fetch(`${origin}/files/${file.sha256}`);
  if (!res.ok || !res.body) fail(ErrorCodes.HASH, `download of ${file.name} failed: HTTP ${res.status}`);
  mkdirSync(cacheDir, { recursive: true });
  const partial = `${cached}.part-${process.pid}`;
  const hash = createHash('sha256');
  const out = createWriteStream(partial);
  let bytes = 0;
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      hash.update(chunk);
      bytes += chunk.length;
      if (!out.write(chunk)) await once(out, 'drain');
    }
    out.end();
    await once(out, 'finish');
  } catch (err) {
    out.destroy();
    rmSync(partial, { force: true });
    throw err;
  }
  const digest = hash.digest('hex');
  if (digest !== file.sha256) {
    rmSync(partial, { force: true });
    fail(
      ErrorCodes.HASH,
      `${file.name}: downloaded sha256 ${digest} does not match the manifest's ${file.sha256}; refusing it`,
    );
  }
  renameSync(partial, cached);
  log(`downloaded ${file.name} (${(bytes / 1e6).toFixed(1)} MB), sha256 verified`);
  return cached;
}

export async function runNodeWorker(opts: NodeWorkerOptions): Promise<WorkerSession> {
  const log = opts.log ?? ((line: string) => console.log(`[worker${opts.name ? ' ' + opts.name : ''}] ${line}`));
  const backend = await initBackend(opts.backend, log);
  if (backend.fellBack) log(`warning: running on the slow ${backend.name} backend`);
  const origin = httpOrigin(opts.url);
  const session = new WorkerSession(
    {
      backend: backend.name,
      platform: 'node',
      slow: backend.fellBack,
      adapter: backend.adapter,
      ...(backend.name === 'wasm' ? { memoryLimit: WASM_HEAP_MAX_BYTES } : {}),
      // read after initBackend, which turns on relaxed SIMD where Node needs a V8 flag for it
      arithmetic: { supported: supportedArithmetic, select: selectArithmetic },
      log,
      async loadBase(manifest: RunManifest): Promise<BaseWeights> {
        const config = checkModelConfig(manifest.model.config);
        const { baseFormat } = manifest.model;
        if (backend.name === 'wasm') {
          // The micro-batch shape comes later, with each assignment, so only the weights are checked here:
          // a model whose weights overflow the heap would load silently corrupted (tfjs-wasm does not
          // check allocations). Planning each worker's micro-batches against its memory is not done yet.
          const input = { config, lora: manifest.lora, microBatch: 1, sequenceLength: 1, baseFormat };
          const refusal = wasmHeapRefusal(input, 'this worker');
          if (refusal) {
            log(`${ErrorCodes.MEMORY}: ${refusal}`);
            process.exit(2);
          }
        }
        const paths: string[] = [];
        for (const f of weightFiles(manifest.model)) paths.push(await fetchVerified(origin, f, opts.cacheDir, log));
        return baseFormat
          ? loadCompactBaseFile(config, paths[0], baseFormat)
          : loadSafetensorsFiles(config, paths).weights;
      },
    },
    { name: opts.name, token: opts.token, hooks: faultHooks(process.env.LORAMESH_FAULT) },
  );

  let failures = 0;
  // the URL given, then (once it cannot be reached) the fallbacks its welcome listed, in turn
  let url = opts.url;
  while (!session.finished) {
    const attempt = await connectOnce({ ...opts, url }, session, log);
    if (session.finished) break;
    if (attempt.refusal) throw new LoraMeshError(attempt.refusal.code, attempt.refusal.reason);
    failures = attempt.opened ? 0 : failures + 1;
    const urls = [opts.url, ...session.fallback.filter((u) => u !== opts.url)];
    if (session.redirect) {
      // sent to an ingestion thread: go there at once; the URL given stays the place to come back to
      url = session.redirect;
      session.redirect = null;
      continue;
    }
    if (failures > 0 && urls.length > 1) {
      url = urls[(urls.indexOf(url) + 1) % urls.length];
      log(`trying ${url}`);
    }
    if (opts.maxRetries !== undefined && failures > opts.maxRetries)
      fail(ErrorCodes.STATE, `could not reach ${opts.url} after ${failures} attempts`);
    const delay = reconnectDelayMs(failures, Math.random());
    log(`disconnected; reconnecting in ${(delay / 1000).toFixed(1)} s`);
    await new Promise((r) => setTimeout(r, delay));
  }
  return session;
}

interface Attempt {
  opened: boolean;
  /** why the coordinator will never accept this worker, or null when retrying may help */
  refusal: Refusal | null;
}

/**
 * One connection, from the upgrade to the close: whether it opened, and the refusal that ended it
 * if retrying cannot change it (a refused upgrade's status and X-Loramesh-Error, a reject frame the
 * session noted, or the close reason).
 */
function connectOnce(opts: NodeWorkerOptions, session: WorkerSession, log: (line: string) => void): Promise<Attempt> {
  return new Promise((resolve) => {
    const headers: Record<string, string> = opts.token ? { authorization: `Bearer ${opts.token}` } : {};
    const ws = new WebSocket(opts.url, { ...NODE_CLIENT, headers });
    let opened = false;
    let refusal: Refusal | null = null;
    /** set when we ended a refused upgrade ourselves: the error terminate() raises says nothing new */
    let answered = false;
    ws.on('open', () => {
      opened = true;
      ws.send(session.hello());
    });
    ws.on('unexpected-response', (_req, res) => {
      const errorCode = headerValue(res.headers['x-loramesh-error']);
      refusal = refusalFromHttp(res.statusCode ?? 0, errorCode);
      if (!refusal) log(`connection refused: HTTP ${res.statusCode}${errorCode ? ` ${cleanPeerText(errorCode)}` : ''}`);
      answered = true;
      ws.terminate();
    });
    ws.on('message', (data) => {
      session
        .receive(asBytes(data as Buffer), (reply) => ws.readyState === ws.OPEN && ws.send(reply))
        .then(() => {
          if (session.finished) ws.close(1000, 'done');
        });
    });
    ws.on('error', (err) => {
      if (!answered) log(`connection error: ${err.message}`);
    });
    ws.on('close', (code, reason) => {
      resolve({ opened, refusal: refusal ?? session.refused ?? refusalFromClose(code, reason.toString()) });
    });
  });
}
