// The PEFT adapters the GPU machine's interoperability check loads (test/fixtures/interop/<model>/adapter/,
// committed so that machine needs no TypeScript) are exactly what scripts/interop/golden-adapter.ts
// writes from the golden fixtures today: regenerate them with it when a fixture changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeGoldenAdapter } from '../../scripts/interop/golden-adapter.ts';

const fixtures = fileURLToPath(new URL('../fixtures/', import.meta.url));

test('the committed interop adapters equal golden-adapter.ts output, byte for byte', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'loramesh-interop-fixtures-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  for (const name of ['llama-tied-gqa', 'qwen2', 'gpt2', 'mistral']) {
    const fresh = writeGoldenAdapter(join(fixtures, 'hf', name), join(root, name));
    for (const file of ['adapter_config.json', 'adapter_model.safetensors']) {
      const committed = readFileSync(join(fixtures, 'interop', name, 'adapter', file));
      assert.ok(committed.equals(readFileSync(join(fresh, file))), `${name}/${file} differs: rerun golden-adapter.ts`);
    }
  }
});
