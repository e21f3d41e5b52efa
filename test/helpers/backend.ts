// Tests run on the backend named by LORAMESH_TEST_BACKEND (default wasm, the CPU path users get).
import { initBackend, type BackendName } from '../../node/backend.ts';

export const backend = await initBackend((process.env.LORAMESH_TEST_BACKEND ?? 'wasm') as BackendName);
