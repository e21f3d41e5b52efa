// A live coordinator answers bad frames with stable error codes, keeps the offender's work safe
// and finishes the run with the same adapter as a clean run.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { Packr } from 'msgpackr';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import { decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import type { Message } from '../../shared/protocol/messages.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { Deployment, RunConfigInput } from '../../coordinator/run/run-config.ts';
import { runTraining, type RunOptions } from '../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

const lora = checkLoraConfig({ r: 2, alpha: 4 });
const train = checkTrainConfig({ steps: 8, globalBatch: 4, microBatch: 2, seed: 9 });
let root = '';
let base: Omit<RunOptions, 'config'>;
before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-bad-'));
  writeTinyModelDir(join(root, 'model'), 4);
  const model = await openModelDir(join(root, 'model'));
  const examples = demoExamples(model.tokenizer, demoTaskData(32, 4, 9));
  base = {
    model,
    examples,
    workerOutput: 'ignore',
    progress: false,
  };
});
after(() => rmSync(root, { recursive: true, force: true }));

/** The run's config: this file's settings, with the given deployment fields. */
const config = (deployment: Partial<Deployment>): RunConfigInput => ({
  run: { lora, train },
  deployment: { outDir: join(root, 'runs'), backend: 'wasm', cacheDir: join(root, 'cache'), ...deployment },
});

/** Sends frames over a raw socket and collects the coordinator's answers. */
async function probe(url: string): Promise<Message[]> {
  const ws = new WebSocket(url);
  const replies: Message[] = [];
  ws.on('message', (data) => replies.push(decodeMessage(new Uint8Array(data as Buffer))));
  await new Promise((resolve) => ws.once('open', resolve));
  const packr = new Packr({ useRecords: false });
  const frames: (Uint8Array | string)[] = [
    new Uint8Array([0xc1, 0xff, 0x00]), // not msgpack
    'hello as text', // text frame
    packr.pack({ type: 'nope' }),
    packr.pack({ type: 'result', assignmentId: 'x' }), // missing fields
    encodeMessage({ type: 'ready', paramVersion: 0 }), // before hello
    encodeMessage({
      type: 'result',
      assignmentId: 'stolen',
      paramVersion: 0,
      tokenCount: 1,
      lossSum: 1,
      computeMs: 1,
      grads: { codec: 'f32', values: new Float32Array(0) },
    }),
  ];
  for (const f of frames) ws.send(f);
  ws.send(encodeMessage({ type: 'hello', protocol: 999, backend: 'x', platform: 'node' }));
  await new Promise((resolve) => ws.once('close', resolve));
  return replies;
}

test('bad frames get error codes, the run completes unchanged', async () => {
  const clean = await runTraining({ ...base, config: config({ runId: 'clean', localWorkers: 1 }), log: () => {} });
  const probes: Promise<Message[]>[] = [];
  const noisy = await runTraining({
    ...base,
    config: config({ runId: 'noisy', localWorkers: 1 }),
    log: () => {},
    onListening: ({ wsUrl }) => {
      probes.push(probe(wsUrl));
    },
  });
  assert.equal(probes.length, 1, 'the coordinator should announce its URL once');
  const codes = (await probes[0]).map((m) => (m.type === 'reject' ? m.code : m.type));
  assert.deepEqual(codes, [
    'LM_ERR_DECODE',
    'LM_ERR_DECODE',
    'LM_ERR_UNKNOWN_TYPE',
    'LM_ERR_FIELD',
    'LM_ERR_STATE',
    'LM_ERR_ASSIGNMENT',
    'LM_ERR_PROTOCOL_VERSION',
  ]);
  assert.equal(maxAbsDiff(noisy.adapter, clean.adapter), 0);
});
