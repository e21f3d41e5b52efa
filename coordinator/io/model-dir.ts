/**
 * A model directory on disk in Hugging Face layout: config.json, model.safetensors or a sharded
 * model.safetensors.index.json, tokenizer.json (+ tokenizer_config.json, generation_config.json),
 * or the demo's vocab.json. Weight files are hashed (sha256) so workers fetch them by content and
 * verify them.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { checkModelConfig, type ModelConfig } from '../../shared/config.ts';
import { CharTokenizer } from '../../shared/data/char-tokenizer.ts';
import { loadHfTokenizer, type TextTokenizer } from '../../shared/data/tokenizer.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import type { BaseFile } from '../../shared/protocol/messages.ts';
import { sha256File } from '../../node/hash.ts';
import { loadSafetensorsFiles, type LoadedWeights } from '../../node/load-weights.ts';

export interface ModelFile extends BaseFile {
  path: string;
}

export interface ModelDir {
  dir: string;
  config: ModelConfig;
  /** config.json as written, kept for copying into merged models */
  rawConfig: Record<string, unknown>;
  /**
   * Read on first use, so commands that take token ids (merge, logits) open a folder without one;
   * a missing or oversized tokenizer fails there.
   */
  readonly tokenizer: TextTokenizer;
  /** the files a worker needs: config.json and the weight files */
  files: ModelFile[];
  /** tokenizer and generation files to copy alongside a merged model */
  extraFiles: string[];
}

function readJson(path: string, what: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    fail(ErrorCodes.MODEL, `${what} ${path}: not valid JSON (${(err as Error).message})`);
  }
}

/** The weight files of a model directory: one model.safetensors, a sharded index, or any *.safetensors (the demo). */
function weightFileNames(dir: string, dirArg: string): string[] {
  const index = join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) {
    const map = readJson(index, 'shard index').weight_map;
    if (typeof map !== 'object' || map === null)
      fail(ErrorCodes.MODEL, `${index}: weight_map should be an object of tensor → file`);
    const names = [...new Set(Object.values(map as Record<string, string>))].sort();
    for (const n of names) {
      if (typeof n !== 'string' || n.includes('/') || n.includes('\\') || !n.endsWith('.safetensors'))
        fail(
          ErrorCodes.MODEL,
          `${index}: shard name ${JSON.stringify(n)} should be a *.safetensors file in the same directory`,
        );
      if (!existsSync(join(dir, n))) fail(ErrorCodes.MODEL, `${index} names shard ${n}, which is missing`);
    }
    return names;
  }
  if (existsSync(join(dir, 'model.safetensors'))) return ['model.safetensors'];
  if (existsSync(join(dir, 'pytorch_model.bin')))
    fail(
      ErrorCodes.MODEL,
      `--model ${dirArg} has only pytorch_model.bin; convert it to safetensors (pickle files are not loaded)`,
    );
  fail(ErrorCodes.MODEL, `--model ${dirArg}: no model.safetensors or model.safetensors.index.json`);
}

function loadTokenizer(dir: string, dirArg: string, config: ModelConfig): TextTokenizer {
  const tokenizerPath = join(dir, 'tokenizer.json');
  if (existsSync(tokenizerPath)) {
    const tokenizerConfig = existsSync(join(dir, 'tokenizer_config.json'))
      ? readJson(join(dir, 'tokenizer_config.json'), 'tokenizer config')
      : {};
    return loadHfTokenizer(readJson(tokenizerPath, 'tokenizer'), tokenizerConfig, config);
  }
  const vocabPath = join(dir, 'vocab.json');
  if (existsSync(vocabPath)) {
    const vocab = readJson(vocabPath, 'vocabulary');
    if (vocab.type === 'char') return new CharTokenizer(vocab as never);
  }
  fail(ErrorCodes.MODEL, `--model ${dirArg}: no tokenizer.json`);
}

export async function openModelDir(dirArg: string): Promise<ModelDir> {
  const dir = resolve(dirArg);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) fail(ErrorCodes.MODEL, `--model ${dirArg}: not a directory`);
  const configPath = join(dir, 'config.json');
  if (!existsSync(configPath)) fail(ErrorCodes.MODEL, `--model ${dirArg}: no config.json`);
  const rawConfig = readJson(configPath, 'model config');
  const config = checkModelConfig(rawConfig);
  const files: ModelFile[] = [];
  for (const name of ['config.json', ...weightFileNames(dir, dirArg)]) {
    const path = join(dir, name);
    files.push({ name, path, sha256: await sha256File(path), bytes: statSync(path).size });
  }
  const extraFiles = [
    'tokenizer.json',
    'tokenizer_config.json',
    'generation_config.json',
    'special_tokens_map.json',
    'vocab.json',
  ].filter((f) => existsSync(join(dir, f)));
  let tokenizer: TextTokenizer | undefined;
  return {
    dir,
    config,
    rawConfig,
    files,
    extraFiles,
    get tokenizer() {
      return (tokenizer ??= checkedTokenizer(dir, dirArg, config));
    },
  };
}

function checkedTokenizer(dir: string, dirArg: string, config: ModelConfig): TextTokenizer {
  const tokenizer = loadTokenizer(dir, dirArg, config);
  if (tokenizer.vocabSize > config.vocab_size)
    fail(
      ErrorCodes.MODEL,
      `the tokenizer has ${tokenizer.vocabSize} tokens but config.vocab_size is ${config.vocab_size}`,
    );
  return tokenizer;
}

export function loadWeights(model: ModelDir): LoadedWeights {
  return loadSafetensorsFiles(
    model.config,
    model.files.filter((f) => f.name.endsWith('.safetensors')).map((f) => f.path),
  );
}
