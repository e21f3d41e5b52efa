// Which GPUs count as software (slow) for both workers: by the adapter's fallback flag or by name.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isSoftwareAdapter, isSoftwareRenderer } from '../../kernels/software-device.ts';

/** A stand-in GPUAdapter: only `info` and the older adapter-level isFallbackAdapter are read. */
const adapter = (info: Partial<GPUAdapterInfo> & { isFallbackAdapter?: boolean }, onAdapter?: boolean) => {
  const fullInfo = { vendor: '', architecture: '', device: '', description: '', ...info };
  return { info: fullInfo, isFallbackAdapter: onAdapter } as unknown as GPUAdapter;
};

test('renderer names: SwiftShader, llvmpipe, lavapipe, softpipe, Basic Render are software; real GPUs are not', () => {
  for (const name of [
    'ANGLE (Google, Vulkan 1.3.0 (SwiftShader Device (Subzero) (0x0000C0DE)), SwiftShader driver)',
    'llvmpipe (LLVM 15.0.7, 256 bits)',
    'lavapipe',
    'softpipe',
    'Microsoft Basic Render Driver',
    'Software Adapter',
  ])
    assert.equal(isSoftwareRenderer(name), true, name);
  const real = ['ANGLE (NVIDIA, NVIDIA GeForce RTX 4090 Direct3D11 vs_5_0 ps_5_0)', 'Apple M2', 'AMD Radeon Pro', ''];
  for (const name of real) {
    assert.equal(isSoftwareRenderer(name), false, name);
  }
});

test('WebGPU adapters: the fallback flag (on the info or, in older browsers, the adapter) or a software name', () => {
  const swiftShader = adapter({ vendor: 'google', architecture: 'swiftshader' });
  assert.equal(isSoftwareAdapter(swiftShader), true, "Dawn's SwiftShader");
  assert.equal(isSoftwareAdapter(adapter({ vendor: 'mesa', description: 'llvmpipe (LLVM 15.0.7, 256 bits)' })), true);
  assert.equal(isSoftwareAdapter(adapter({ vendor: 'nvidia', architecture: 'ada', isFallbackAdapter: true })), true);
  const olderBrowser = adapter({ vendor: 'nvidia', architecture: 'ada' }, true);
  assert.equal(isSoftwareAdapter(olderBrowser), true, 'flag on the adapter');
  assert.equal(isSoftwareAdapter(adapter({ vendor: 'nvidia', architecture: 'ada', isFallbackAdapter: false })), false);
  assert.equal(isSoftwareAdapter(adapter({ vendor: 'apple', architecture: 'metal-3' })), false);
});
