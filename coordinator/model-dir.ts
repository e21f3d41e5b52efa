/**
 * A model directory on disk (Hugging Face layout): config.json, *.safetensors, and the demo's
 * vocab.json. Files are hashed (sha256) so workers can fetch them by content and verify.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type * as tf from '@tensorflow/tfjs-core';
import { checkModelConfig, type ModelConfig } from '../shared/config.ts';
import { CharTokenizer } from '../shared/data/char-tokenizer.ts';
import { ErrorCodes, fail } from '../shared/errors.ts';
import { weightsFromSafetensors } from '../shared/model/weights.ts';
import type { BaseFile } from '../shared/protocol/messages.ts';

export interface ModelFile extends BaseFile {
  path: string;
}

export interface ModelDir {
  dir: string;
  config: ModelConfig;
  tokenizer: CharTokenizer;
  /** the files a worker needs: config.json and the weight files */
  files: ModelFile[];
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export function openModelDir(dirArg: string): ModelDir {
  const dir = resolve(dirArg);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) fail(ErrorCodes.MODEL, `--model ${dirArg}: not a directory`);
  const configPath = join(dir, 'config.json');
  if (!existsSync(configPath)) fail(ErrorCodes.MODEL, `--model ${dirArg}: no config.json`);
  let rawConfig: unknown;
  try {
    rawConfig = JSON.parse(readFileSync(configPath, 'utf8'));
  } catch (err) {
    fail(ErrorCodes.MODEL, `${configPath}: not valid JSON (${(err as Error).message})`);
  }
  const config = checkModelConfig(rawConfig);
  const vocabPath = join(dir, 'vocab.json');
  if (!existsSync(vocabPath)) fail(ErrorCodes.MODEL, `--model ${dirArg}: no vocab.json (Hugging Face tokenizer.json support comes with HF model loading)`);
  const tokenizer = new CharTokenizer(JSON.parse(readFileSync(vocabPath, 'utf8')));
  if (tokenizer.size !== config.vocab_size) fail(ErrorCodes.MODEL, `vocab.json has ${tokenizer.size} tokens but config.vocab_size is ${config.vocab_size}`);
  const weightNames = readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
  if (weightNames.length === 0) fail(ErrorCodes.MODEL, `--model ${dirArg}: no *.safetensors file`);
  const files = ['config.json', ...weightNames].map((name) => {
    const path = join(dir, name);
    const bytes = readFileSync(path);
    return { name, path, sha256: sha256(bytes), bytes: bytes.length };
  });
  return { dir, config, tokenizer, files };
}

export function loadWeights(model: ModelDir): Map<string, tf.Tensor> {
  const weightFiles = model.files.filter((f) => f.name.endsWith('.safetensors'));
  return weightsFromSafetensors(model.config, weightFiles.map((f) => new Uint8Array(readFileSync(f.path))));
}
