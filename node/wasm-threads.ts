/**
 * Multi-threaded tfjs-backend-wasm in Node. tfjs ships the threaded SIMD build but turns threads
 * off in Node (tfjs issue #3830), for two reasons this shim works around:
 *  1. its pthread workers and main script are handed to Emscripten as blob: URLs, which Node's
 *     worker_threads cannot load: here both are written to files (one directory under the OS temp
 *     directory per tfjs build, reused by every process);
 *  2. the C++ side caps the XNNPACK thread pool at emscripten_num_logical_cores() / 2, read from
 *     os.cpus() when the module starts (it assumes 2 hyper-threads per core): os.cpus() reports
 *     2 × the asked thread count while the module starts, then is restored.
 * The backend is registered under the usual name 'wasm' with the same kernels, so everything else
 * is unchanged. Emscripten pre-starts 8 pthread workers whatever the count (its PTHREAD_POOL_SIZE);
 * the pool's running threads are unref'd so they never keep a finished process alive.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';

const require = createRequire(import.meta.url);

/** Writes text to path unless it is there (atomically: concurrent processes write the same bytes). */
function writeOnce(path: string, text: string): string {
  if (!existsSync(path)) {
    const temp = `${path}.${process.pid}.tmp`;
    writeFileSync(temp, text);
    renameSync(temp, path);
  }
  return path;
}

/** The most threads the tfjs C++ side accepts (its pre-started pthread pool). */
export const MAX_WASM_THREADS = 8;

interface EmscriptenModule {
  cwrap(name: string, returnType: string | null, argTypes: string[]): (...args: number[]) => unknown;
  tfjs?: Record<string, unknown>;
  PThread?: { runningWorkers: { unref(): void }[] };
}

/**
 * Replaces the registered 'wasm' backend factory with one that starts the threaded build (its memory is
 * shared) with `xnnpackThreads` XNNPACK threads. node/backend.ts starts it with one: the worker's threads
 * go to the project's own GEMM (kernels/gemm-threads.ts), which runs most of a step, rather than to
 * XNNPACK's pool, whose threads poll after each of its ops and would contend with the GEMM's for the
 * cores (measured: the demo step 85–102 ms with both pools at 2 threads, 68–75 with the GEMM's alone).
 * Call before tf.setBackend('wasm'); once it runs, getThreadsCount() from tfjs-backend-wasm says how
 * many XNNPACK threads it really got.
 */
export async function registerThreadedWasm(xnnpackThreads: number): Promise<void> {
  const threads = xnnpackThreads;
  if (!Number.isInteger(threads) || threads < 1 || threads > MAX_WASM_THREADS) {
    throw new Error(`wasm threads should be an integer in 1..${MAX_WASM_THREADS}, got ${threads}`);
  }
  const wasmPkg = await import('@tensorflow/tfjs-backend-wasm');
  const outDir = join(dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'wasm-out');
  const factory = require(join(outDir, 'tfjs-backend-wasm-threaded-simd.js')) as (
    config: object,
  ) => Promise<EmscriptenModule>;
  const { wasmWorkerContents } = require(join(outDir, 'tfjs-backend-wasm-threaded-simd.worker.js')) as {
    wasmWorkerContents: string;
  };
  // tfjs escapes the newlines inside the worker's string literals the same way before making its blob.
  const workerSource = wasmWorkerContents.replace(/\n/g, '\\n');
  const mainSource = `var WasmBackendModuleThreadedSimd = ${factory.toString()}`;
  // One directory per content, shared by every process (no temp directory left behind per process).
  const digest = createHash('sha256').update(workerSource).update(mainSource).digest('hex').slice(0, 16);
  const dir = join(os.tmpdir(), `loramesh-wasm-threads-${digest}`);
  mkdirSync(dir, { recursive: true });
  const workerFile = writeOnce(join(dir, 'pthread-worker.js'), workerSource);
  const mainFile = writeOnce(join(dir, 'main.js'), mainSource);

  tf.removeBackend('wasm');
  tf.registerBackend(
    'wasm',
    async () => {
      const realCpus = os.cpus;
      os.cpus = () => Array.from({ length: 2 * threads }, () => realCpus()[0]);
      try {
        const module = await factory({
          locateFile: (path: string, prefix: string) =>
            path.endsWith('.worker.js')
              ? workerFile
              : path.endsWith('.wasm')
                ? join(outDir, 'tfjs-backend-wasm-threaded-simd.wasm')
                : prefix + path,
          mainScriptUrlOrBlob: mainFile,
        });
        // The same bridge tfjs-backend-wasm's init() builds.
        module.tfjs = {
          init: module.cwrap('init', null, []),
          initWithThreadsCount: module.cwrap('init_with_threads_count', null, ['number']),
          getThreadsCount: module.cwrap('get_threads_count', 'number', []),
          registerTensor: module.cwrap('register_tensor', null, ['number', 'number', 'number']),
          disposeData: module.cwrap('dispose_data', null, ['number']),
          dispose: module.cwrap('dispose', null, []),
        };
        wasmPkg.setThreadsCount(threads);
        const backend = new wasmPkg.BackendWasm(
          module as unknown as ConstructorParameters<typeof wasmPkg.BackendWasm>[0],
        );
        // The thread pool's pthreads run for the life of the process; Emscripten refs the Node
        // worker of every running pthread, so without this a finished CLI would never exit.
        for (const worker of module.PThread?.runningWorkers ?? []) worker.unref();
        return backend;
      } finally {
        os.cpus = realCpus;
      }
    },
    2,
  );
}
