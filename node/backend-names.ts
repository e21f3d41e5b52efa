/** The tfjs backends a Node process can ask for (node/backend.ts initializes them; this module loads nothing). */
export const BACKENDS = ['auto', 'wasm', 'webgpu', 'cpu', 'tensorflow'] as const;
export type BackendName = (typeof BACKENDS)[number];
