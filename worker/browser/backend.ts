/// <reference types="@webgpu/types" />
/**
 * Picks the browser's tfjs backend: WebGPU → WebGL → wasm, or the one forced by `#backend=…`.
 * Every step down is logged and marks the worker slow, and so does a software device (SwiftShader,
 * llvmpipe), so the coordinator and the page both say so. A forced backend that cannot start is an
 * error, never a silent substitute.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-webgl';
import '@tensorflow/tfjs-backend-webgpu';
import { getThreadsCount, setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import { isSoftwareAdapter, isSoftwareRenderer } from '../../kernels/software-device.ts';
import { installWasmKernels } from '../../kernels/wasm-kernels.ts';
import { installWebgpuCompactKernels } from '../../kernels/webgpu-compact.ts';
import type { BrowserBackend } from './fragment.ts';

export interface BrowserBackendInfo {
  name: BrowserBackend;
  /** the device behind the backend, e.g. "google swiftshader", "ANGLE (NVIDIA …)", "cpu, simd, 4 threads" */
  adapter: string;
  /** fell back from a faster backend, or runs on a software device */
  slow: boolean;
  /** why it is slow, e.g. "software device", "fell back from webgpu, webgl" */
  slowReason?: string;
  /** WebGPU device limits in bytes: the largest buffer and storage binding one tensor may use */
  limits?: { maxBufferSize: number; maxStorageBufferBindingSize: number };
  /** why slower backends were chosen, one line per step down */
  notes: string[];
}

async function webgpuAdapterInfo(): Promise<{ description: string; software: boolean } | null> {
  if (!('gpu' in navigator)) return null;
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) return null;
  const info = adapter.info;
  const description =
    [info.vendor, info.architecture, info.device, info.description].filter((s) => s).join(' ') ||
    'unknown WebGPU adapter';
  return { description: description.slice(0, 128), software: isSoftwareAdapter(adapter) };
}

async function tryWebgpu(): Promise<Omit<BrowserBackendInfo, 'notes'> | string> {
  const info = await webgpuAdapterInfo();
  if (!info) return 'WebGPU is not available in this browser (no navigator.gpu adapter)';
  if (!(await tf.setBackend('webgpu'))) return `the WebGPU backend failed to start on ${info.description}`;
  await tf.ready();
  installWebgpuCompactKernels();
  const device = (tf.backend() as unknown as { device: GPUDevice }).device;
  const limits = {
    maxBufferSize: device.limits.maxBufferSize,
    maxStorageBufferBindingSize: device.limits.maxStorageBufferBindingSize,
  };
  return { name: 'webgpu', adapter: info.description, slow: info.software, limits };
}

async function tryWebgl(): Promise<Omit<BrowserBackendInfo, 'notes'> | string> {
  if (!(await tf.setBackend('webgl'))) return 'WebGL is not available in this browser';
  await tf.ready();
  // Half-float textures would round every activation to 11 bits: gradients would be wrong, not slow.
  if (!tf.env().getBool('WEBGL_RENDER_FLOAT32_ENABLED'))
    return 'WebGL cannot render float32 textures here (float16 would corrupt the gradients)';
  const gl = (tf.backend() as unknown as { gpgpu: { gl: WebGLRenderingContext } }).gpgpu.gl;
  const debug = gl.getExtension('WEBGL_debug_renderer_info');
  const renderer = String(
    (debug && gl.getParameter(debug.UNMASKED_RENDERER_WEBGL)) ||
      gl.getParameter(gl.RENDERER) ||
      'unknown WebGL renderer',
  ).slice(0, 128);
  return { name: 'webgl', adapter: renderer, slow: isSoftwareRenderer(renderer) };
}

async function tryWasm(log: (line: string) => void): Promise<Omit<BrowserBackendInfo, 'notes'> | string> {
  // The coordinator serves tfjs-backend-wasm's binaries itself (no CDN): /wasm/<file>.wasm.
  setWasmPaths('/wasm/');
  if (!(await tf.setBackend('wasm'))) return 'the wasm backend failed to start';
  await tf.ready();
  installWasmKernels();
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  const threads = getThreadsCount();
  if (!(await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT'))) {
    log(
      'wasm runs single-threaded: ' +
        (crossOriginIsolated
          ? 'this browser lacks wasm threads'
          : 'the page is not cross-origin isolated (COOP/COEP headers missing)'),
    );
  }
  return {
    name: 'wasm',
    adapter: `cpu${simd ? ', simd' : ''}, ${threads} thread${threads === 1 ? '' : 's'}`,
    slow: false,
  };
}

const ATTEMPTS: Record<
  BrowserBackend,
  (log: (line: string) => void) => Promise<Omit<BrowserBackendInfo, 'notes'> | string>
> = { webgpu: tryWebgpu, webgl: tryWebgl, wasm: tryWasm };

export async function initBrowserBackend(
  forced: BrowserBackend | undefined,
  log: (line: string) => void,
): Promise<BrowserBackendInfo> {
  const order: BrowserBackend[] = forced ? [forced] : ['webgpu', 'webgl', 'wasm'];
  const notes: string[] = [];
  for (const name of order) {
    let outcome: Omit<BrowserBackendInfo, 'notes'> | string;
    try {
      outcome = await ATTEMPTS[name](log);
    } catch (err) {
      outcome = `the ${name} backend failed to start: ${(err as Error).message}`;
    }
    if (typeof outcome !== 'string') {
      const skipped = order.slice(0, order.indexOf(name));
      const reasons = [
        ...(outcome.slow ? ['software device'] : []),
        ...(skipped.length ? [`fell back from ${skipped.join(', ')}`] : []),
      ];
      if (outcome.slow) log(`warning: ${name} runs on a software device (${outcome.adapter}): correct but slow`);
      return { ...outcome, slow: reasons.length > 0, slowReason: reasons.join(', ') || undefined, notes };
    }
    notes.push(outcome);
    log(`${outcome}${forced ? '' : '; trying the next backend'}`);
  }
  return fail(
    ErrorCodes.BACKEND,
    forced ? `#backend=${forced} was asked for but ${notes[0]}` : `no tfjs backend could start: ${notes.join('; ')}`,
  );
}
