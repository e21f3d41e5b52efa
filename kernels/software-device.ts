/**
 * Whether a GPU backend runs on a software (CPU) implementation of a GPU: correct, but slower than
 * wasm. Both workers ask it (Node's Dawn adapter, the browser's WebGPU adapter and WebGL renderer),
 * so they agree on what counts as slow.
 */

/**
 * Names software GPUs give themselves: SwiftShader (Chromium, Dawn), lavapipe (Mesa Vulkan),
 * llvmpipe / softpipe (Mesa GL), Microsoft Basic Render Driver (Windows, no GPU driver).
 */
const SOFTWARE_DEVICE = /swiftshader|llvmpipe|lavapipe|softpipe|software|basic render/i;

/** True when a renderer or adapter name (e.g. WebGL's UNMASKED_RENDERER_WEBGL) names a software GPU. */
export function isSoftwareRenderer(name: string): boolean {
  return SOFTWARE_DEVICE.test(name);
}

/** True for a WebGPU adapter that says it is a fallback (software) adapter or whose info names a software GPU. */
export function isSoftwareAdapter(adapter: GPUAdapter): boolean {
  const info = adapter.info;
  // isFallbackAdapter moved from the adapter to its info in newer Chromium; read either.
  const fallback =
    (info as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
    (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
    false;
  return fallback || isSoftwareRenderer([info.vendor, info.architecture, info.device, info.description].join(' '));
}
