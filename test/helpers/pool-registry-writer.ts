// A child for test/coordinator/pool/registry.test.ts: opens the registry in argv[2], makes a tenant and an
// upload, then submits runs one after another, printing "acked <run id>" after each submitRun returns,
// until the parent kills it (SIGKILL).
import { PoolRegistry } from '../../coordinator/pool/registry.ts';

const registry = PoolRegistry.open(process.argv[2]);
const { tenant } = registry.createTenant('writer', { maxConcurrentRuns: 1_000_000 });
const upload = registry.addUpload(tenant.id, {
  name: 'd.jsonl',
  sha256: 'ab'.repeat(32),
  bytes: 10,
  examples: 1,
  path: 'u',
});
for (let i = 0; ; i++) {
  const run = registry.submitRun(tenant.id, {
    name: `run ${i}`,
    config: { i, padding: 'x'.repeat(200) },
    uploadId: upload.id,
    steps: 10,
    weight: 1,
    priority: 0,
  });
  process.stdout.write(`acked ${run.id}\n`);
}
