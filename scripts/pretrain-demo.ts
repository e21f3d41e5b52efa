/**
 * Pretrains the built-in demo base model (`npm run pretrain-demo`): a ~1M-parameter Llama-style
 * model on the demo task family's copy / reverse / uppercase tasks, seeded and reproducible on the
 * same backend. Writes models/demo-base/{config.json, model.safetensors, vocab.json}. The
 * fine-tuning task (reverse + uppercase, tag V) is never shown here.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import cliProgress from 'cli-progress';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../node/backend.ts';
import type { ModelConfig } from '../shared/config.ts';
import { CharTokenizer } from '../shared/data/char-tokenizer.ts';
import { DEMO_ALPHABET, PRETRAIN_TAGS, randomWord, TASKS, toExample, taskSplits } from '../shared/data/demo-tasks.ts';
import { accuracy, predict } from '../shared/data/exact-match.ts';
import { encodeSafetensors } from '../shared/formats/safetensors.ts';
import { FrozenBase, trainableParams } from '../shared/lora/params.ts';
import { LlamaModel } from '../shared/model/llama.ts';
import { parameterShapes } from '../shared/model/causal-lm.ts';
import { Rng } from '../shared/rng.ts';
import { tokenLossSum } from '../shared/train/gradients.ts';
import { packMicroBatch } from '../shared/train/micro-batch.ts';
import { adamwStep, clipGlobalNorm, initAdam, learningRate } from '../shared/train/optimizer.ts';

const opts = new Command()
  .option('--steps <n>', 'maximum optimizer steps', '3000')
  .option('--batch <n>', 'sequences per step', '64')
  .option('--lr <x>', 'peak learning rate', '3e-3')
  .option('--seed <n>', 'seed for init and data', '1234')
  .option('--eval-every <n>', 'steps between accuracy checks', '250')
  .option('--target <x>', 'stop once every task reaches this exact-match accuracy', '0.99')
  .option('--out <dir>', 'output model directory', 'models/demo-base')
  .parse()
  .opts();

const steps = Number(opts.steps);
const batchSize = Number(opts.batch);
const seed = Number(opts.seed);
const backend = await initBackend('wasm');
const tok = CharTokenizer.fromAlphabet(DEMO_ALPHABET);
const config: ModelConfig = {
  model_type: 'llama',
  vocab_size: tok.size,
  hidden_size: 128,
  intermediate_size: 256,
  num_hidden_layers: 6,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 32,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: true,
  bos_token_id: tok.bosId,
  eos_token_id: tok.eosId,
  pad_token_id: tok.padId,
};
const model = new LlamaModel(config);

// GPT-2-style init: N(0, 0.02²) for matrices, residual output projections scaled by 1/√(2L), norms at 1.
const rng = new Rng(seed);
const params = new Map<string, Float32Array>();
const shapes = parameterShapes(config);
for (const [name, shape] of shapes) {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  if (shape.length === 1) data.fill(1);
  else {
    const std = /o_proj|down_proj/.test(name) ? 0.02 / Math.sqrt(2 * config.num_hidden_layers) : 0.02;
    for (let i = 0; i < data.length; i++) data[i] = rng.normal() * std;
  }
  params.set(name, data);
}
const names = [...shapes.keys()];
const adam = initAdam(params);
const schedule = { lr: Number(opts.lr), warmupSteps: 100, steps, minLrRatio: 0.05 };
const hyper = { beta1: 0.9, beta2: 0.98, eps: 1e-8, weightDecay: 0.01 };
const evalSets = PRETRAIN_TAGS.flatMap((tag) => taskSplits(tag, 0, 100, seed + 1).eval);

function evaluate(): Record<string, number> {
  const weights = new Map(names.map((n) => [n, tf.tensor(params.get(n)!, shapes.get(n)!)]));
  const base = new FrozenBase(config, weights);
  const preds = predict(model, base, tok, evalSets);
  base.dispose();
  tf.dispose([...weights.values()]);
  return Object.fromEntries(PRETRAIN_TAGS.map((tag) => [tag, accuracy(preds.filter((p) => p.sample.tag === tag))]));
}

console.log(
  `pretraining ${names.length} tensors, ` +
    `${[...params.values()].reduce((n, p) => n + p.length, 0)} parameters on ${backend.name}`,
);
const bar = new cliProgress.SingleBar(
  { format: 'pretrain |{bar}| {value}/{total} steps | loss {loss} | {eta_formatted} left' },
  cliProgress.Presets.shades_classic,
);
bar.start(steps, 0, { loss: '-' });
let lastAcc: Record<string, number> = {};
let step = 0;
for (; step < steps; step++) {
  const examples = Array.from({ length: batchSize }, () => {
    const tag = PRETRAIN_TAGS[rng.int(PRETRAIN_TAGS.length)];
    const input = randomWord(rng);
    return toExample(tok, { tag, input, output: TASKS[tag](input) });
  });
  const mb = packMicroBatch(examples, tok.padId, 0);
  const { loss, grads } = tf.tidy(() => {
    const inputIds = tf.tensor2d(mb.inputIds, [mb.batch, mb.time], 'int32');
    const targets = tf.tensor1d(mb.targets, 'int32');
    const mask = tf.tensor1d(mb.lossMask);
    const tensors = names.map((n) => tf.tensor(params.get(n)!, shapes.get(n)!));
    const f = (...ps: tf.Tensor[]) =>
      tokenLossSum(
        model.forward(trainableParams(config, new Map(names.map((n, i) => [n, ps[i]]))), inputIds),
        targets,
        mask,
      );
    const { value, grads } = tf.valueAndGrads(f)(tensors);
    return { loss: value, grads };
  });
  const tokens = mb.lossMask.reduce((a, b) => a + b, 0);
  const gradArrays = new Map(names.map((n, i) => [n, (grads[i].dataSync() as Float32Array).map((g) => g / tokens)]));
  const meanLoss = loss.dataSync()[0] / tokens;
  tf.dispose([loss, ...grads]);
  clipGlobalNorm(gradArrays, 1);
  adamwStep(params, gradArrays, adam, learningRate(step, schedule), hyper);
  bar.update(step + 1, { loss: meanLoss.toFixed(4) });
  if ((step + 1) % Number(opts.evalEvery) === 0) {
    lastAcc = evaluate();
    bar.stop();
    console.log(`step ${step + 1}: exact match ${JSON.stringify(lastAcc)}`);
    if (Object.values(lastAcc).every((a) => a >= Number(opts.target))) {
      step++;
      break;
    }
    bar.start(steps, step + 1, { loss: meanLoss.toFixed(4) });
  }
}
bar.stop();
lastAcc = evaluate();
console.log(`final exact match after ${step} steps: ${JSON.stringify(lastAcc)}`);

mkdirSync(opts.out, { recursive: true });
writeFileSync(
  join(opts.out, 'config.json'),
  JSON.stringify({ architectures: ['LlamaForCausalLM'], ...config, torch_dtype: 'float32' }, null, 2) + '\n',
);
writeFileSync(join(opts.out, 'vocab.json'), JSON.stringify(tok.vocab) + '\n');
writeFileSync(
  join(opts.out, 'model.safetensors'),
  encodeSafetensors(Object.fromEntries(names.map((n) => [n, { data: params.get(n)!, shape: shapes.get(n)! }])), {
    format: 'pt',
    pretrain_steps: String(step),
    pretrain_seed: String(seed),
    exact_match: JSON.stringify(lastAcc),
  }),
);
console.log(`wrote ${opts.out}`);
