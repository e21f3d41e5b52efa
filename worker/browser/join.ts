/**
 * The join page: turns this browser tab into a loramesh worker. It reads its settings from the URL
 * fragment (`/join#token=…&backend=wasm|webgl|webgpu&name=…`), picks a tfjs backend, connects to
 * the coordinator that served the page (ws(s)://host/ws), fetches and caches the base model, and
 * runs the same neutral WorkerSession as Node workers. What the tab does is shown on the page and
 * kept on `window.loramesh` (status plus the last few micro-batches with their gradients) so tests
 * can compare this tab's numbers against Node's.
 */
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import { decodeMessage } from '../../shared/protocol/codec.ts';
import {
  splitTensors,
  type Assign,
  type Message,
  type RunManifest,
  type TensorMap,
} from '../../shared/protocol/messages.ts';
import { decodeFloats } from '../../shared/protocol/wire-codec.ts';
import type { MicroBatch } from '../../shared/train/micro-batch.ts';
import { WorkerSession } from '../../shared/worker-loop.ts';
import { selectArithmetic, supportedArithmetic } from '../../kernels/arithmetic.ts';
import { initBrowserBackend } from './backend.ts';
import { loadBaseWeights } from './base-files.ts';
import { Connection } from './connection.ts';
import { parseFragment, socketUrl } from './fragment.ts';
import { JoinView, type JoinStatus } from './view.ts';

/** One micro-batch computed by this tab, with everything needed to recompute it elsewhere. */
export interface ComputedMicroBatch {
  step: number;
  index: number;
  paramVersion: number;
  microBatch: MicroBatch;
  /** the LoRA parameters the gradients were computed against */
  params: TensorMap;
  lossSum: number;
  tokenCount: number;
  computeMs: number;
  grads: TensorMap;
}

export interface JoinDebug {
  status: JoinStatus;
  log: string[];
  /** the last few computed micro-batches, oldest first */
  results: ComputedMicroBatch[];
  lastResult: ComputedMicroBatch | null;
}

declare global {
  interface Window {
    loramesh: JoinDebug;
  }
}

const KEEP_RESULTS = 8;
const fmtBytes = (b: number) =>
  b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : b >= 1e6 ? `${(b / 1e6).toFixed(1)} MB` : `${(b / 1e3).toFixed(1)} kB`;

async function main(): Promise<void> {
  const view = new JoinView(document);
  const debug: JoinDebug = { status: view.status, log: view.logLines, results: [], lastResult: null };
  window.loramesh = debug;
  const log = (line: string) => view.log(line);
  try {
    const settings = parseFragment(location.hash);
    view.set({ detail: `starting the ${settings.backend ?? 'best available'} backend` });
    const backend = await initBrowserBackend(settings.backend, log);
    const limits = backend.limits
      ? `maxBufferSize ${fmtBytes(backend.limits.maxBufferSize)} · ` +
        `maxStorageBufferBindingSize ${fmtBytes(backend.limits.maxStorageBufferBindingSize)}`
      : '';
    view.set({
      backend: backend.name,
      adapter: backend.adapter,
      slow: backend.slow,
      slowReason: backend.slowReason ?? '',
      limits,
    });
    log(`backend ${backend.name} on ${backend.adapter}${backend.slow ? ` (slow: ${backend.slowReason})` : ''}`);
    if (limits) log(`WebGPU limits: ${limits} (the coordinator sets the micro-batch size)`);

    let vocabSize = 0;
    const session = new WorkerSession(
      {
        backend: backend.name,
        platform: 'browser',
        adapter: backend.adapter,
        slow: backend.slow,
        // relaxed-fma where the browser has relaxed SIMD (Chrome 114+), else simd128 only
        arithmetic: { supported: supportedArithmetic, select: selectArithmetic },
        log,
        loadBase: (manifest) => {
          view.set({ state: 'loading', detail: 'loading the base model' });
          return loadBaseWeights(manifest, {
            log,
            progress: (p) => {
              const from = p.source === 'cache' ? 'the browser cache' : 'the coordinator';
              const text = `${p.file}: ${fmtBytes(p.received)} / ${fmtBytes(p.total)} from ${from}`;
              view.set({ base: text, detail: text });
            },
          });
        },
      },
      { token: settings.token, name: settings.name },
    );

    // Bookkeeping for the page, from the frames themselves (the session owns the protocol). In a pool, each run's
    // frames come inside `channel` messages: they are followed the same way, by run.
    let manifest: RunManifest | null = null;
    const manifests = new Map<string, RunManifest>();
    let pending: Assign | null = null;
    const observeIncoming = (message: Message, runId?: string) => {
      switch (message.type) {
        case 'pool-welcome':
          vocabSize = message.manifest.model.config.vocab_size;
          view.set({
            state: 'joining',
            workerId: `${message.workerId}${settings.name ? ` · ${settings.name}` : ''}`,
            runId: 'a standing pool',
            detail: 'joined a pool: the base is loaded once for every run',
          });
          return;
        case 'channel':
          return observe(message.frame, (inner) => observeIncoming(inner, message.runId));
        case 'welcome':
          vocabSize = message.manifest.model.config.vocab_size;
          manifest = message.manifest;
          manifests.set(runId ?? message.manifest.runId, message.manifest);
          if (runId) {
            log(`pool: joined run ${message.manifest.runId}`);
            return;
          }
          view.set({
            state: 'joining',
            workerId: `${message.workerId}${settings.name ? ` · ${settings.name}` : ''}`,
            runId: message.manifest.runId,
            detail: `joined run ${message.manifest.runId}`,
          });
          return;
        case 'assign': {
          pending = message;
          if (runId) manifest = manifests.get(runId) ?? null;
          const mb = message.microBatch;
          view.set({
            state: 'computing',
            detail:
              `${runId ? `run ${runId}, ` : ''}step ${message.step}, micro-batch ${message.index} ` +
              `(${mb.batch}×${mb.time} tokens)`,
          });
          const logitsBytes = 4 * mb.batch * mb.time * vocabSize;
          if (backend.limits && logitsBytes > backend.limits.maxStorageBufferBindingSize) {
            log(
              `warning: this micro-batch's logits need ${fmtBytes(logitsBytes)}, ` +
                "more than the adapter's maxStorageBufferBindingSize " +
                `${fmtBytes(backend.limits.maxStorageBufferBindingSize)}; ` +
                'ask the coordinator for a smaller --micro-batch',
            );
          }
          return;
        }
        case 'assign-local':
          view.set({
            state: 'computing',
            detail: `step ${message.step}, local job ${message.index} (${message.microBatches.length} inner steps)`,
          });
          return;
        case 'done':
          // in a pool a run ends and the tab stays for the next
          if (runId) log(`pool: run ${runId} finished: ${message.reason}`);
          else view.set({ state: 'finished', detail: message.reason });
          return;
        default:
      }
    };
    const observeOutgoing = (message: Message) => {
      if (message.type === 'channel') {
        observe(message.frame, observeOutgoing);
      } else if (message.type === 'ready') {
        view.set({ state: 'ready', detail: 'waiting for work' });
      } else if (message.type === 'result' && pending && pending.assignmentId === message.assignmentId) {
        const entry: ComputedMicroBatch = {
          step: pending.step,
          index: pending.index,
          paramVersion: message.paramVersion,
          microBatch: pending.microBatch,
          params: session.heldParams(),
          lossSum: message.lossSum,
          tokenCount: message.tokenCount,
          computeMs: message.computeMs,
          grads: manifest ? Object.fromEntries(splitTensors(decodeFloats(message.grads), manifest.adapter)) : {},
        };
        debug.results.push(entry);
        if (debug.results.length > KEEP_RESULTS) debug.results.shift();
        debug.lastResult = entry;
        pending = null;
        view.set({
          state: 'ready',
          detail: 'waiting for work',
          done: view.status.done + 1,
          lastLoss: message.tokenCount > 0 ? message.lossSum / message.tokenCount : 0,
          lastComputeMs: message.computeMs,
        });
      } else if (message.type === 'worker-error') {
        pending = null;
        view.set({ state: 'ready', detail: `last micro-batch failed: ${message.code}` });
      }
    };
    const observe = (bytes: Uint8Array, fn: (m: Message) => void) => {
      try {
        fn(decodeMessage(bytes));
      } catch {
        // a bad frame: the session itself rejects and reports it
      }
    };

    const url = socketUrl(location);
    const connection = new Connection(
      url,
      session,
      {
        log,
        incoming: (bytes) => observe(bytes, observeIncoming),
        outgoing: (bytes) => observe(bytes, observeOutgoing),
        connecting: (attempt) =>
          view.set({
            state: 'connecting',
            detail: `connecting to ${url}${attempt > 1 ? ` (attempt ${attempt})` : ''}`,
          }),
        open: () => log(`connected to ${url}`),
        reconnecting: (delayMs, why) => {
          log(`${why}; reconnecting in ${(delayMs / 1000).toFixed(1)} s`);
          view.set({ state: 'reconnecting', detail: `${why}; retrying in ${(delayMs / 1000).toFixed(1)} s` });
        },
        ended: (why, detail) => {
          log(why === 'refused' ? `error: ${detail}` : `connection closed: ${detail}`);
          view.set({ state: why === 'refused' ? 'error' : why, detail });
        },
      },
      settings.token,
    );
    connection.start();
  } catch (err) {
    log(`error: ${(err as Error).message}`);
    view.set({ state: 'error', detail: (err as Error).message });
  }
}

void main();
