/**
 * Picks and initializes a tfjs backend in Node. Only entry points call this; shared/ never imports
 * a backend. `auto` prefers tfjs-node-gpu, then tfjs-node (both optional: their install script
 * downloads libtensorflow, see README), then wasm. Every fallback is logged, never silent.
 */
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs-core';
import { fail, ErrorCodes } from '../shared/errors.ts';

const require = createRequire(import.meta.url);
// Registers tfjs-core's gradients on the shared engine (see scripts/build-gradients.mjs).
try {
  require('../build/tfjs-gradients.cjs');
} catch {
  fail(ErrorCodes.BACKEND, 'build/tfjs-gradients.cjs is missing: run `npm install` (or `node scripts/build-gradients.mjs`)');
}

export const BACKENDS = ['auto', 'wasm', 'cpu', 'tensorflow'] as const;
export type BackendName = (typeof BACKENDS)[number];

export interface BackendInfo {
  /** the tfjs backend actually running */
  name: string;
  /** true when a faster backend was asked for or expected and is not available */
  fellBack: boolean;
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

export async function initBackend(requested: BackendName, log: (line: string) => void = () => {}): Promise<BackendInfo> {
  if (!(BACKENDS as readonly string[]).includes(requested)) {
    fail(ErrorCodes.CONFIG, `--backend should be one of ${BACKENDS.join(', ')}, got ${JSON.stringify(requested)}`);
  }
  let fellBack = false;
  let note = '';
  if (requested === 'auto' || requested === 'tensorflow') {
    const pkg = await tryTensorflow();
    if (pkg && (await tf.setBackend('tensorflow'))) {
      return { name: 'tensorflow', fellBack: false, note: `using ${pkg}` };
    }
    if (requested === 'tensorflow') fail(ErrorCodes.BACKEND, 'backend "tensorflow" needs @tensorflow/tfjs-node-gpu or @tensorflow/tfjs-node installed (see README)');
    note = 'tfjs-node(-gpu) not installed; using wasm';
  }
  if (requested !== 'cpu') {
    await import('@tensorflow/tfjs-backend-wasm');
    if (await tf.setBackend('wasm')) {
      await tf.ready();
      if (note) log(note);
      return { name: 'wasm', fellBack, note };
    }
    fellBack = true;
    note = 'wasm backend failed to initialize; falling back to the slow cpu backend';
    log(`warning: ${note}`);
  }
  await import('@tensorflow/tfjs-backend-cpu');
  await tf.setBackend('cpu');
  await tf.ready();
  return { name: 'cpu', fellBack, note };
}
