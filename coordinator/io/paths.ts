import { packagePath } from '../../node/package-root.ts';

/** The demo base model that ships in the repo. */
export const DEMO_MODEL_DIR = packagePath('models', 'demo-base');
