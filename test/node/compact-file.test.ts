// Compact base files on disk (node/compact-file.ts): quantized from a checkpoint in two shards, one
// tensor at a time, the file is the very bytes of the in-memory writer with the sha256 it reports, and
// loads back; a checkpoint that lacks a tensor leaves no file behind.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import '../helpers/backend.ts';
import { ErrorCodes } from '../../shared/errors.ts';
import { encodeSafetensors } from '../../shared/formats/safetensors.ts';
import { CompactWeight } from '../../shared/model/compact-linear.ts';
import { writeCompactBase } from '../../shared/quant/compact-file.ts';
import { loadCompactBaseFile, writeCompactBaseFile } from '../../node/compact-file.ts';
import { throwsCode } from '../helpers/assert.ts';
import { randomArrays, tinyConfig } from '../helpers/tiny-model.ts';

const root = mkdtempSync(join(tmpdir(), 'loramesh-compact-file-'));
after(() => rmSync(root, { recursive: true, force: true }));

const config = tinyConfig();
const arrays = randomArrays(config, 7);
const names = [...arrays.keys()];
// two shards, the second holding the first half of the tensors: the file's order is the model's, not theirs
const shards = [names.slice(names.length / 2), names.slice(0, names.length / 2)].map((part, i) => {
  const path = join(root, `model-0000${i + 1}-of-00002.safetensors`);
  writeFileSync(path, encodeSafetensors(Object.fromEntries(part.map((n) => [n, arrays.get(n)!]))));
  return path;
});
const source = {
  'model-00001-of-00002.safetensors': '1'.repeat(64),
  'model-00002-of-00002.safetensors': '2'.repeat(64),
};

test('a sharded checkpoint quantized to disk: the in-memory writer’s bytes, its sha256, and it loads back', () => {
  const spec = { format: 'nf4', blockSize: 8 } as const;
  const out = join(root, 'base.safetensors');
  const written = writeCompactBaseFile(config, shards, spec, source, out);
  const bytes = readFileSync(out);
  const chunks: Uint8Array[] = [];
  writeCompactBase(
    config,
    spec,
    source,
    (name) => arrays.get(name)!.data,
    (c) => chunks.push(c.slice()),
  );
  assert.ok(bytes.equals(Buffer.concat(chunks)));
  assert.equal(written.bytes, bytes.length);
  assert.equal(written.sha256, createHash('sha256').update(bytes).digest('hex'));
  assert.deepEqual(
    readdirSync(root).filter((f) => f.includes('.part-')),
    [],
    'no partial file left',
  );
  const weights = loadCompactBaseFile(config, out, spec);
  assert.equal([...weights.values()].filter((w) => w instanceof CompactWeight).length, 2 * 7 + 2);
  for (const w of weights.values()) w.dispose();
  throwsCode(() => loadCompactBaseFile(config, out, { format: 'int8' }), ErrorCodes.MODEL, /holds nf4\/8/);
});

test('a checkpoint lacking a tensor is refused before anything is written', () => {
  const out = join(root, 'never.safetensors');
  throwsCode(
    () => writeCompactBaseFile(config, shards.slice(1), { format: 'int8' }, source, out),
    ErrorCodes.MODEL,
    /missing tensor/,
  );
  assert.equal(existsSync(out), false);
  assert.deepEqual(
    readdirSync(root).filter((f) => f.includes('.part-')),
    [],
  );
});
