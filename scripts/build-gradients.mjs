// tfjs-core registers its gradients only from its ESM sources, whose inner imports lack file
// extensions, so plain Node cannot import them (DESIGN.md §7). This bundles that one entry into
// build/tfjs-gradients.cjs once at install time; the bundle registers the gradients on the shared
// global engine used by the tfjs-core that every backend imports. Browsers bundle the entry directly.
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
await build({
  stdin: { contents: "import '@tensorflow/tfjs-core/dist/register_all_gradients';", resolveDir: root },
  bundle: true,
  platform: 'node',
  format: 'cjs',
  outfile: join(root, 'build', 'tfjs-gradients.cjs'),
  mainFields: ['module', 'main'],
  logLevel: 'warning',
});
