import { fileURLToPath } from 'node:url';

/** The demo base model that ships in the repo. */
export const DEMO_MODEL_DIR = fileURLToPath(new URL('../models/demo-base', import.meta.url));
