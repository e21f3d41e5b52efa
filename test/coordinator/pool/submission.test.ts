// A pool submission (coordinator/pool/submission.ts) is checked before it is queued: train's run
// settings field by field on the pool's base, the targets and rank against that model, and the share.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { openModelDir } from '../../../coordinator/io/model-dir.ts';
import { DEMO_MODEL_DIR } from '../../../coordinator/io/paths.ts';
import { checkSubmission, type PoolBase } from '../../../coordinator/pool/submission.ts';

const dir = await openModelDir(DEMO_MODEL_DIR);
const base: PoolBase = { model: DEMO_MODEL_DIR, config: dir.config, baseFormat: null };
const lora = { r: 8, alpha: 16, targetModules: ['q_proj', 'v_proj'] };
const train = { steps: 50, globalBatch: 8, microBatch: 4 };

test('a valid submission gets train’s defaults, the pool’s model and the default share', () => {
  const s = checkSubmission({ name: 'reverse task', run: { lora, train }, weight: 3 }, base);
  assert.equal(s.name, 'reverse task');
  assert.equal(s.settings.model, DEMO_MODEL_DIR);
  assert.equal(s.settings.baseFormat, null);
  assert.equal(s.settings.lora.r, 8);
  assert.equal(s.settings.train.steps, 50);
  assert.equal(s.settings.aggregation, 'sum');
  assert.equal(s.settings.arithmetic, 'simd128');
  assert.deepEqual(s.share, { weight: 3, priority: 0 });
});

test('refused with the field named: unknown target, rank larger than the layer, fields the pool fixes, bad values', () => {
  const refuse = (raw: unknown, pattern: RegExp) => assert.throws(() => checkSubmission(raw, base), pattern);
  refuse(
    { run: { lora: { ...lora, targetModules: ['c_attn'] }, train } },
    /LM_ERR_CONFIG: run\.lora: .*c_attn, which a llama model does not have/,
  );
  // the demo's k_proj and v_proj map 128 features to 64 (2 key-value heads of 32)
  refuse(
    { run: { lora: { ...lora, r: 65 }, train } },
    /LM_ERR_CONFIG: run\.lora\.r 65 is larger than layer model\.layers\.0\.self_attn\.v_proj \(64 × 128\): expected r ≤ 64/,
  );
  checkSubmission({ run: { lora: { ...lora, r: 64 }, train } }, base);
  refuse({ run: { lora, train, model: 'other' } }, /LM_ERR_CONFIG: run\.model: the pool fixes it/);
  refuse({ run: { lora, train, baseFormat: 'nf4' } }, /run\.baseFormat: the pool fixes it/);
  refuse({ run: { lora, train, lr: 1 } }, /run has an unknown field "lr"/);
  refuse({ run: { lora, train }, owner: 'x' }, /submission has an unknown field "owner"/);
  refuse({ run: { lora, train: { ...train, steps: 0 } } }, /LM_ERR_CONFIG: run\.train: .*steps/);
  refuse({ run: { lora, train }, weight: 0 }, /LM_ERR_CONFIG: weight 0/);
  refuse({ run: { lora, train }, priority: 0.5 }, /LM_ERR_CONFIG: priority 0\.5/);
  refuse({ run: { lora, train }, name: 'x'.repeat(81) }, /LM_ERR_CONFIG: name "x+…"/);
  refuse([], /submission: expected a JSON object/);
  refuse({ run: 'q_proj' }, /run: expected an object of run settings/);
});

test('a local-steps run is served by a pool with workers, refused by one that computes in-process', () => {
  const run = { lora, train, local: { steps: 4, innerLr: 1e-3, outerLr: 0.7, outerMomentum: 0.9 } };
  assert.equal(checkSubmission({ run }, base).settings.local?.steps, 4);
  assert.throws(
    () => checkSubmission({ run }, { ...base, inProcess: true }),
    /LM_ERR_CONFIG: run\.local: local steps \(DiLoCo\) need workers; this pool computes in-process/,
  );
});
