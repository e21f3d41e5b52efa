// `npm test`: runs every test/**/*.test.ts with node's test runner (Node 20 has no --test globs).
// Extra arguments filter by path substring: `npm test -- protocol lora`.
//
// The browser suites (test/browser/) and the Node WebGPU suite need Debian's chromium (and its
// SwiftShader Vulkan driver with libvulkan1). Without them they are skipped and the last line says
// which and how to enable them; with LORAMESH_REQUIRE_BROWSER=1 (set by .ci/run) a skip is a
// failure, so CI never loses browser coverage silently. Nothing is installed from here.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const walk = (dir) =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)],
  );
const filters = process.argv.slice(2);
const files = walk('test')
  .filter((f) => f.endsWith('.test.ts'))
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
  .sort();
if (files.length === 0) {
  console.error(`no test files match ${filters.join(', ')}`);
  process.exit(1);
}

const ENABLE = 'apt-get install chromium libvulkan1';
const needsBrowser = (f) => f.startsWith(join('test', 'browser')) || f.endsWith('webgpu-node.test.ts');
const vulkanLoader = () =>
  spawnSync('ldconfig', ['-p'], { encoding: 'utf8' }).stdout?.includes('libvulkan.so.1') ?? false;
const browserReady =
  existsSync('/usr/bin/chromium') && existsSync('/usr/lib/chromium/vk_swiftshader_icd.json') && vulkanLoader();
const skipped = browserReady ? [] : files.filter(needsBrowser);
if (skipped.length > 0 && process.env.LORAMESH_REQUIRE_BROWSER === '1') {
  console.error(
    'LORAMESH_REQUIRE_BROWSER=1 but chromium, its SwiftShader driver or libvulkan1 is missing; ' +
      `${skipped.length} browser suites cannot run. Enable them with: ${ENABLE}`,
  );
  process.exit(1);
}
const run = files.filter((f) => !skipped.includes(f));
const { status } = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=1', ...run], {
  stdio: 'inherit',
});
if (skipped.length > 0) {
  console.log(
    `skipped ${skipped.length} browser suites (no chromium/libvulkan1 here): ${skipped.join(', ')}. ` +
      `Enable them with: ${ENABLE}`,
  );
}
process.exit(status ?? 1);
