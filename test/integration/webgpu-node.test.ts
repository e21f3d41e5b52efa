// WebGPU in Node (Dawn from the `webgpu` package; SwiftShader where there is no GPU) computes the
// same LoRA gradients as wasm: one fixed demo-model micro-batch, each backend in its own process
// (a tfjs backend is process-global), agreeing within 1e-4 relative L2 per tensor and in the loss.
// Without a WebGPU adapter this test FAILS, never skips: CI needs `apt-get install -y libvulkan1
// chromium` (the Vulkan loader and Chromium's SwiftShader driver, found at
// /usr/lib/chromium/vk_swiftshader_icd.json; node/backend.ts sets VK_ICD_FILENAMES to it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { relativeL2Distance } from '../../shared/train/relative-l2.ts';
import type { GradProbeResult } from '../helpers/grad-probe.ts';

const PROBE = fileURLToPath(new URL('../helpers/grad-probe.ts', import.meta.url));
const TOLERANCE = 1e-4;

/** Runs the probe on one backend; a failure carries the child's stderr (e.g. LM_ERR_BACKEND: no WebGPU adapter …). */
function probe(backend: string, dir: string): Promise<GradProbeResult> {
  const outPath = join(dir, `${backend}.json`);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', PROBE, backend, outPath], {
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 120_000,
    });
    let stderr = '';
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code === 0) return resolve(JSON.parse(readFileSync(outPath, 'utf8')));
      const hint =
        backend === 'webgpu'
          ? '\nWebGPU in Node needs a Vulkan driver; ' +
            'without a GPU: apt-get install -y libvulkan1 chromium (SwiftShader).'
          : '';
      reject(new Error(`grad probe on ${backend} exited with ${signal ?? code}:\n${stderr.slice(-3000)}${hint}`));
    });
  });
}

test('webgpu gradients and loss equal wasm within 1e-4 relative L2 (demo model, LoRA q,v, one micro-batch)', {
  timeout: 180_000,
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'loramesh-webgpu-'));
  try {
    const [wasm, webgpu] = await Promise.all([probe('wasm', dir), probe('webgpu', dir)]);
    assert.equal(wasm.backend, 'wasm');
    assert.equal(webgpu.backend, 'webgpu');
    t.diagnostic(`${webgpu.note}${webgpu.software ? ' (software)' : ''}`);
    t.diagnostic(
      `computeGradientsAsync, 4 sequences: wasm ${wasm.stepMs.toFixed(0)} ms, webgpu ${webgpu.stepMs.toFixed(0)} ms`,
    );

    assert.equal(webgpu.tokenCount, wasm.tokenCount);
    const lossError = Math.abs(webgpu.lossSum - wasm.lossSum) / Math.abs(wasm.lossSum);
    t.diagnostic(
      `loss sum: wasm ${wasm.lossSum}, webgpu ${webgpu.lossSum}, relative error ${lossError.toExponential(2)}`,
    );
    assert.ok(
      lossError <= TOLERANCE,
      `loss sum: webgpu ${webgpu.lossSum} vs wasm ${wasm.lossSum} (relative error ${lossError})`,
    );

    assert.deepEqual(Object.keys(webgpu.grads), Object.keys(wasm.grads));
    let worst = { name: '', error: 0 };
    for (const [name, expected] of Object.entries(wasm.grads)) {
      assert.ok(
        expected.some((g) => g !== 0),
        `${name}: the wasm gradient is all zero, so the comparison would prove nothing`,
      );
      const error = relativeL2Distance([[expected, webgpu.grads[name]]]);
      assert.ok(error <= TOLERANCE, `${name}: ‖g_webgpu − g_wasm‖₂ / ‖g_wasm‖₂ = ${error}, expected ≤ ${TOLERANCE}`);
      if (error > worst.error) worst = { name, error };
    }
    t.diagnostic(
      `worst gradient relative L2 error ${worst.error.toExponential(2)} (${worst.name}) ` +
        `over ${Object.keys(wasm.grads).length} tensors`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
