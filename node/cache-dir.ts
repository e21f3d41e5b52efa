import { homedir } from 'node:os';
import { join } from 'node:path';

/** Where a Node worker caches verified base-model files: LORAMESH_CACHE, else ~/.cache/loramesh. */
export const defaultCacheDir = (): string => process.env.LORAMESH_CACHE ?? join(homedir(), '.cache', 'loramesh');
