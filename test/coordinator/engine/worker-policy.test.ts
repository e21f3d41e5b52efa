// The memory check as data (coordinator/engine/worker-policy.ts), the table a relay or ingestion thread gets in its
// welcome: the verdict from the table agrees with the memory plan itself (shared/model/memory-plan.ts) on either
// side of each threshold, at Qwen2.5-0.5B's shapes, and a table that crossed the wire (msgpack) gives the same words.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { shapeConfig } from '../../../scripts/make-checkpoint.ts';
import { memoryCheckFrom, memoryNeeds, memoryVerdict } from '../../../coordinator/engine/worker-policy.ts';
import { checkModelConfig, type LinearModule } from '../../../shared/config.ts';
import { type MemoryPlanInput, planMemory, smallerBaseFormats } from '../../../shared/model/memory-plan.ts';
import { decodeMessage, encodeMessage } from '../../../shared/protocol/codec.ts';
import type { Message } from '../../../shared/protocol/messages.ts';

const INPUT: MemoryPlanInput = {
  config: checkModelConfig(shapeConfig('qwen2.5-0.5b', 'f32')),
  lora: { r: 16, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as LinearModule[] },
  // short sequences: the compact formats' plans (not recomputing) then need less than f32 recomputing
  microBatch: 1,
  sequenceLength: 32,
  backend: 'wasm',
};

test('the verdict from a memory table matches the plan on either side of each threshold, with a smaller format', () => {
  const needs = memoryNeeds(INPUT);
  const held = (p: ReturnType<typeof planMemory>) => p.total - p.parts.runtime;
  const plain = held(planMemory(INPUT));
  const recomputing = held(planMemory({ ...INPUT, recompute: true }));
  assert.equal(needs.bytes, plain);
  assert.equal(needs.recomputing, recomputing);
  assert.ok(recomputing < plain, `recomputing ${recomputing} < ${plain}`);
  assert.deepEqual(memoryVerdict(needs, 'wasm', plain), { fits: true, recompute: false });
  assert.deepEqual(memoryVerdict(needs, 'wasm', plain - 1), { fits: true, recompute: true });
  assert.deepEqual(memoryVerdict(needs, 'wasm', recomputing), { fits: true, recompute: true });
  const refused = memoryVerdict(needs, 'wasm', recomputing - 1);
  assert.equal(refused.fits, false);
  // the widest smaller base format that fits is named with its bytes
  const smaller = smallerBaseFormats(INPUT);
  assert.ok(smaller.length >= 2, 'bf16, int8 and nf4 all need less than f32');
  const nf4 = smaller.find((o) => o.spec.format === 'nf4')!;
  const nf4Bytes = held(nf4.plan);
  const why = memoryVerdict(needs, 'wasm', nf4Bytes);
  assert.equal(why.fits, false);
  assert.match(
    why.fits ? '' : why.why,
    new RegExp(
      `^the run needs ${(recomputing / 1e9).toFixed(2)} GB even recomputing activations \\(.+\\); ` +
        `this wasm worker can hold ${(nf4Bytes / 1e9).toFixed(2)} GB; --base-format nf4 needs ${(nf4Bytes / 1e9).toFixed(2)} GB$`,
    ),
  );
  // below every format: no hint
  const none = memoryVerdict(needs, 'wasm', 1000);
  assert.match(none.fits ? '' : none.why, /can hold 0\.00 GB$/);
});

test('a memory table sent in a welcome gives the same verdicts at the relay; an unknown backend is checked as cpu', () => {
  const table = Object.fromEntries(
    (['wasm', 'cpu'] as const).map((backend) => [backend, memoryNeeds({ ...INPUT, backend })]),
  );
  const sent = decodeMessage(
    encodeMessage({
      type: 'welcome',
      workerId: 'relay',
      manifest: { runId: 'r', adapter: [] },
      relayPolicy: { memory: table },
    } as unknown as Message),
  );
  assert.equal(sent.type, 'welcome');
  const received = sent.type === 'welcome' ? sent.relayPolicy!.memory! : {};
  const atRoot = memoryCheckFrom((k) => table[k]);
  const atRelay = memoryCheckFrom((k) => received[k]);
  for (const limit of [1000, table.wasm.recomputing, table.wasm.bytes, table.cpu.recomputing - 1, 8e9])
    for (const backend of ['wasm', 'cpu', 'simulated'])
      assert.deepEqual(atRelay(backend, limit), atRoot(backend, limit), `${backend} at ${limit}`);
  assert.deepEqual(atRelay('simulated', 1000), memoryVerdict(table.cpu, 'simulated', 1000));
  // a backend missing from the table is not checked
  assert.deepEqual(atRelay('webgpu', 1), { fits: true, recompute: false });
});
