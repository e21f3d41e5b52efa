/**
 * Picks and initializes a tfjs backend in Node. Only entry points call this; shared/ never imports
 * a backend. `auto` prefers tfjs-node-gpu, then tfjs-node (both optional: their install script
 * downloads libtensorflow, see README), then wasm. `webgpu` is only used when asked for (Dawn from
 * the `webgpu` package; on a machine without a GPU it runs on SwiftShader, correct but slow).
 * Every fallback is logged, never silent.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { setFlagsFromString } from 'node:v8';
import { Worker } from 'node:worker_threads';
import * as tf from '@tensorflow/tfjs-core';
import { fail, ErrorCodes } from '../shared/errors.ts';
import { packagePath } from './package-root.ts';
import { BACKENDS, type BackendName } from './backend-names.ts';
import { isSoftwareAdapter } from '../kernels/software-device.ts';
import { setGemmHelperSpawner, type SpawnHelper } from '../kernels/gemm-threads.ts';
import { installWasmKernels, wasmMemoryShared } from '../kernels/wasm-kernels.ts';
import { installWebgpuCompactKernels } from '../kernels/webgpu-compact.ts';
import { MAX_WASM_THREADS, registerThreadedWasm } from './wasm-threads.ts';
import { missingVulkan, probeVulkan, useNvidiaIcd } from './vulkan.ts';

const require = createRequire(import.meta.url);
// WebAssembly relaxed SIMD (the relaxed-fma arithmetic, kernels/arithmetic.ts) is behind this V8 flag
// in Node 20 (on by default in Chrome 114+ and in later V8). Set when this module loads, before any
// wasm module compiles: V8 reads it when it validates a module. Harmless where it is already on.
// LORAMESH_RELAXED_SIMD=0 leaves it off: the process then offers simd128 only (as a browser without
// relaxed SIMD does), and a relaxed-fma run refuses it with LM_ERR_ARITHMETIC.
if (process.env.LORAMESH_RELAXED_SIMD !== '0') setFlagsFromString('--experimental-wasm-relaxed-simd');
// Registers tfjs-core's gradients on the shared engine (see scripts/build-gradients.mjs).
try {
  require(packagePath('build', 'tfjs-gradients.cjs'));
} catch {
  fail(
    ErrorCodes.BACKEND,
    'build/tfjs-gradients.cjs is missing: run `npm install` (or `node scripts/build-gradients.mjs`)',
  );
}

export { BACKENDS, type BackendName };

export interface BackendInfo {
  /** the tfjs backend actually running */
  name: string;
  /** true when a faster backend was asked for or expected and is not available */
  fellBack: boolean;
  /** true when the backend runs on a software renderer (WebGPU on SwiftShader or lavapipe): correct but slow */
  software: boolean;
  /** wasm: the XNNPACK threads it runs */
  threads?: number;
  /** the device behind the backend, when known: the WebGPU adapter as "vendor / architecture / description" */
  adapter?: string;
  note: string;
}

async function tryTensorflow(): Promise<string | null> {
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      await import(pkg);
      return pkg;
    } catch {
      // not installed here: optional dependency
    }
  }
  return null;
}

export interface BackendOptions {
  /**
   * XNNPACK threads of the wasm backend in Node (default: env LORAMESH_WASM_THREADS, else 1).
   * More than 1 starts tfjs's threaded build through the shim in wasm-threads.ts.
   */
  wasmThreads?: number;
}

/** LORAMESH_WASM_THREADS, checked: an integer in 1..MAX_WASM_THREADS, or unset. */
/** A compact-GEMM helper thread (kernels/gemm-threads.ts) as a worker_thread that never keeps the process alive. */
const spawnGemmHelper: SpawnHelper = (source, init) => {
  const helper = new Worker(`${source}\nrequire('node:worker_threads').parentPort.once('message', run);`, {
    eval: true,
  });
  helper.postMessage(init);
  helper.unref();
  // Failures inside are counted by the helper itself (kernels/gemm-threads.ts); an error event must
  // not become the process's uncaught exception.
  helper.on('error', () => {});
  return helper;
};

function wasmThreadsFromEnv(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const raw = env.LORAMESH_WASM_THREADS;
  if (raw === undefined || raw === '') return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > MAX_WASM_THREADS)
    fail(
      ErrorCodes.CONFIG,
      `LORAMESH_WASM_THREADS should be an integer in 1..${MAX_WASM_THREADS}, got ${JSON.stringify(raw)}`,
    );
  return n;
}

export async function initBackend(
  requested: BackendName,
  log: (line: string) => void = () => {},
  options: BackendOptions = {},
): Promise<BackendInfo> {
  if (!(BACKENDS as readonly string[]).includes(requested)) {
    fail(ErrorCodes.CONFIG, `--backend should be one of ${BACKENDS.join(', ')}, got ${JSON.stringify(requested)}`);
  }
  // tfjs's own console banners (e.g. "install tfjs-node" on first use of the cpu backend) are off:
  // which backend runs, and whether it is a slow fallback, is said once in our own log line.
  tf.env().set('PROD', true);
  const wasmThreads = options.wasmThreads ?? wasmThreadsFromEnv() ?? 1;
  if (requested === 'webgpu') return initWebgpu(log);
  let fellBack = false;
  let note = '';
  if (requested === 'auto' || requested === 'tensorflow') {
    const pkg = await tryTensorflow();
    if (pkg && (await tf.setBackend('tensorflow'))) {
      return { name: 'tensorflow', fellBack: false, software: false, note: `using ${pkg}` };
    }
    if (requested === 'tensorflow')
      fail(
        ErrorCodes.BACKEND,
        'backend "tensorflow" needs @tensorflow/tfjs-node-gpu or @tensorflow/tfjs-node installed (see README)',
      );
    note = 'tfjs-node(-gpu) not installed; using wasm';
  }
  if (requested !== 'cpu') {
    const wasmPkg = await import('@tensorflow/tfjs-backend-wasm');
    // Threads go to the project's GEMM; XNNPACK runs on the calling thread (node/wasm-threads.ts).
    if (wasmThreads > 1) await registerThreadedWasm(1);
    if (await tf.setBackend('wasm')) {
      await tf.ready();
      installWasmKernels();
      const threads = wasmThreads > 1 && wasmMemoryShared() && wasmPkg.getThreadsCount() === 1 ? wasmThreads : 1;
      setGemmHelperSpawner(threads > 1 ? spawnGemmHelper : null, threads);
      if (threads !== wasmThreads) {
        note = [note, `wasm asked for ${wasmThreads} threads, runs ${threads}`].filter((s) => s).join('; ');
        log(`warning: ${note}`);
      } else if (note) log(note);
      return { name: 'wasm', fellBack, software: false, threads, note };
    }
    fellBack = true;
    note = 'wasm backend failed to initialize; falling back to the slow cpu backend';
    log(`warning: ${note}`);
  }
  await import('@tensorflow/tfjs-backend-cpu');
  await tf.setBackend('cpu');
  await tf.ready();
  return { name: 'cpu', fellBack, software: false, note };
}

/** Chromium's SwiftShader Vulkan driver (Debian package `chromium`): a CPU implementation of Vulkan. */
const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

const describeAdapter = (info: GPUAdapterInfo) =>
  [info.vendor, info.architecture, info.description].filter((s) => s).join(' / ') || 'unnamed adapter';

/**
 * WebGPU in Node: Dawn from the `webgpu` package provides navigator.gpu, then tfjs-backend-webgpu
 * registers itself (it checks navigator.gpu when imported, so the order matters). The system's
 * Vulkan drivers are tried first; when they offer no adapter and VK_ICD_FILENAMES is unset,
 * Chromium's SwiftShader is used, and that is logged as a slow software fallback.
 */
async function initWebgpu(log: (line: string) => void): Promise<BackendInfo> {
  let dawn: typeof import('webgpu');
  try {
    dawn = await import('webgpu');
  } catch (err) {
    return fail(
      ErrorCodes.BACKEND,
      `backend "webgpu" needs the \`webgpu\` npm package (Dawn for Node): ${(err as Error).message}`,
    );
  }
  Object.assign(globalThis, dawn.globals);
  // Vulkan is Dawn's WebGPU backend on Linux; also probing its OpenGL ES backend only prints EGL
  // (XDG_RUNTIME_DIR) errors on headless machines.
  const flags = process.platform === 'linux' ? ['backend=vulkan'] : [];
  const probe = process.platform === 'linux' ? probeVulkan() : null;
  const nvidiaIcd = probe && useNvidiaIcd(probe);
  if (nvidiaIcd) log(`NVIDIA's Vulkan driver has no manifest here: wrote ${nvidiaIcd} and set VK_DRIVER_FILES to it`);
  let gpu = dawn.create(flags);
  let adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  const listed = process.env.VK_DRIVER_FILES || process.env.VK_ICD_FILENAMES;
  let why = listed
    ? `VK_DRIVER_FILES/VK_ICD_FILENAMES=${listed} offers none`
    : `no Vulkan driver offers one and ${SWIFTSHADER_ICD} is missing`;
  let pickedSwiftShader = false;
  if (!adapter && process.platform === 'linux' && !listed && existsSync(SWIFTSHADER_ICD)) {
    // The Vulkan loader reads VK_ICD_FILENAMES when Dawn creates its instance, so a new one sees it.
    process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
    gpu = dawn.create(flags);
    adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
    pickedSwiftShader = adapter !== null;
    why =
      `neither the system's Vulkan drivers nor SwiftShader (${SWIFTSHADER_ICD}) offer one: ` +
      'is the Vulkan loader libvulkan.so.1 installed?';
  }
  if (!adapter) {
    const missing = probe ? missingVulkan(probe) : [];
    return fail(
      ErrorCodes.BACKEND,
      `backend "webgpu": no WebGPU adapter (${why}). ` +
        (missing.length ? `Missing: ${missing.join('; ')}. ` : '') +
        'On a GPU machine, install its Vulkan driver or set VK_DRIVER_FILES to its ICD json ' +
        "(e.g. nvidia_icd.json); without a GPU, install the Vulkan loader and Chromium's SwiftShader " +
        '(apt-get install libvulkan1 chromium)',
    );
  }
  const software = isSoftwareAdapter(adapter);
  const adapterName = describeAdapter(adapter.info);
  // Node 20 has no navigator; later versions have one without gpu.
  if (typeof globalThis.navigator === 'undefined')
    Object.defineProperty(globalThis, 'navigator', { value: {}, configurable: true, writable: true });
  Object.defineProperty(globalThis.navigator, 'gpu', { value: gpu, configurable: true, writable: true });
  try {
    await import('@tensorflow/tfjs-backend-webgpu');
  } catch (err) {
    return fail(
      ErrorCodes.BACKEND,
      `backend "webgpu" needs @tensorflow/tfjs-backend-webgpu: ${(err as Error).message}`,
    );
  }
  if (!tf.findBackendFactory('webgpu')) {
    return fail(
      ErrorCodes.BACKEND,
      'backend "webgpu": @tensorflow/tfjs-backend-webgpu was imported before navigator.gpu existed, ' +
        'so it did not register',
    );
  }
  if (!(await tf.setBackend('webgpu')))
    return fail(ErrorCodes.BACKEND, `backend "webgpu": tfjs could not create a device on ${adapterName}`);
  await tf.ready();
  installWebgpuCompactKernels();
  const note = `WebGPU adapter: ${adapterName}` + (pickedSwiftShader ? ` (VK_ICD_FILENAMES=${SWIFTSHADER_ICD})` : '');
  log(note);
  if (software)
    log(
      `warning: slow fallback: WebGPU runs on a software renderer (${adapterName}), on the CPU; ` +
        'fine for correctness checks, use wasm or a real GPU for speed',
    );
  // A GPU was asked for and only a CPU implementation of one is here: that is a fallback (see fellBack).
  return { name: 'webgpu', fellBack: software, software, adapter: adapterName, note };
}
