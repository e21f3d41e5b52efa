/**
 * The tokenizer interface every loramesh tokenizer implements, and the loader for Hugging Face
 * tokenizers (tokenizer.json + tokenizer_config.json). Encoding and decoding are done by
 * @huggingface/tokenizers, chat templates by @huggingface/jinja — the libraries transformers.js
 * uses — so a model's own files drive both. Platform-neutral: the caller reads the files.
 */
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { describe, ErrorCodes, fail } from '../errors.ts';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface TextTokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;
  /** pad_token_id, else eos, else 0 */
  readonly padId: number;
  /** no special tokens are added */
  encode(text: string): number[];
  /** special tokens are skipped */
  decode(ids: number[]): string;
  /** renders chat messages with the model's chat template; throws LM_ERR_DATA if the model has none */
  renderChat(messages: ChatMessage[], addGenerationPrompt: boolean): string;
  /** whether sequences should start with BOS */
  readonly addBos: boolean;
}

export interface ModelTokenIds {
  bos_token_id?: number;
  eos_token_id?: number | number[];
  pad_token_id?: number;
}

type Json = Record<string, unknown>;

const isObject = (value: unknown): value is Json =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * tokenizer_config.json names special tokens either as a string or, in older files, as
 * {"__type": "AddedToken", "content": "<s>", ...}.
 */
function specialTokenText(config: Json, field: string): string | null {
  const value = config[field];
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  if (isObject(value) && typeof value.content === 'string') return value.content;
  return fail(
    ErrorCodes.MODEL,
    `tokenizer_config.json ${field} is ${describe(value)}; expected a string or {"content": string}`,
  );
}

/** The config's pick of the chat template: a string, or the "default" of a list of named templates. */
function chatTemplateText(config: Json): string | null {
  const value = config.chat_template;
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    const named = value.find((t) => isObject(t) && t.name === 'default');
    if (isObject(named) && typeof named.template === 'string') return named.template;
  }
  return fail(
    ErrorCodes.MODEL,
    `tokenizer_config.json chat_template is ${describe(value)}; ` +
      'expected a string or a list with a {"name": "default", "template": string}',
  );
}

/** Whether the tokenizer.json post-processor's single-sequence template starts with the BOS token (Llama-2/3 style). */
function postProcessorAddsBos(postProcessor: unknown, bosText: string | null): boolean | null {
  if (!isObject(postProcessor)) return null;
  if (postProcessor.type === 'Sequence' && Array.isArray(postProcessor.processors)) {
    for (const p of postProcessor.processors) {
      const adds = postProcessorAddsBos(p, bosText);
      if (adds !== null) return adds;
    }
    return null;
  }
  if (postProcessor.type !== 'TemplateProcessing' || !Array.isArray(postProcessor.single)) return null;
  const first: unknown = postProcessor.single[0];
  return isObject(first) && isObject(first.SpecialToken) && first.SpecialToken.id === bosText;
}

class HfTokenizer implements TextTokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly padId: number;
  readonly addBos: boolean;
  private readonly template: Template | null;
  private readonly templateTokens: Record<string, string | null>;

  constructor(
    private readonly tokenizer: Tokenizer,
    tokenizerJson: Json,
    private readonly config: Json,
    modelConfig: ModelTokenIds,
  ) {
    let maxId = -1;
    for (const id of tokenizer.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;

    const idOf = (field: string): number | null => {
      const text = specialTokenText(config, field);
      if (text === null) return null;
      return (
        tokenizer.token_to_id(text) ??
        fail(
          ErrorCodes.MODEL,
          `tokenizer_config.json ${field} ${JSON.stringify(text)} is not in the tokenizer's vocabulary`,
        )
      );
    };
    // A list of EOS ids in config.json (Llama-3 instruct) means "stop at any"; the first is the one appended to
    // examples.
    const modelEos = Array.isArray(modelConfig.eos_token_id) ? modelConfig.eos_token_id[0] : modelConfig.eos_token_id;
    this.bosId = idOf('bos_token') ?? modelConfig.bos_token_id ?? null;
    this.eosId = idOf('eos_token') ?? modelEos ?? null;
    this.padId = idOf('pad_token') ?? modelConfig.pad_token_id ?? this.eosId ?? 0;

    if (typeof config.add_bos_token === 'boolean') this.addBos = config.add_bos_token && this.bosId !== null;
    else {
      const bosText = this.bosId === null ? null : (tokenizer.id_to_token(this.bosId) ?? null);
      this.addBos = this.bosId !== null && (postProcessorAddsBos(tokenizerJson.post_processor, bosText) ?? true);
    }

    const templateText = chatTemplateText(config);
    try {
      this.template = templateText === null ? null : new Template(templateText);
    } catch (err) {
      fail(ErrorCodes.MODEL, `tokenizer_config.json chat_template does not parse: ${(err as Error).message}`);
    }
    // transformers passes the special tokens to the template as strings (bos_token, eos_token, ...).
    this.templateTokens = Object.fromEntries(
      ['bos_token', 'eos_token', 'unk_token', 'pad_token'].map((field) => [field, specialTokenText(config, field)]),
    );
  }

  encode(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: number[]): string {
    // The library refuses an empty list; decoding nothing is the empty string. Without a
    // config setting, spaces are not "cleaned up" (" ." stays " ."), so decode(encode(s)) === s.
    if (ids.length === 0) return '';
    return this.tokenizer.decode(ids, {
      skip_special_tokens: true,
      clean_up_tokenization_spaces: this.config.clean_up_tokenization_spaces === true,
    });
  }

  renderChat(messages: ChatMessage[], addGenerationPrompt: boolean): string {
    if (this.template === null)
      return fail(ErrorCodes.DATA, 'this tokenizer has no chat template (tokenizer_config.json chat_template)');
    try {
      return this.template.render({ ...this.templateTokens, messages, add_generation_prompt: addGenerationPrompt });
    } catch (err) {
      return fail(ErrorCodes.DATA, `the chat template failed on these messages: ${(err as Error).message}`);
    }
  }
}

/**
 * Builds a tokenizer from a model's tokenizer.json and tokenizer_config.json (both parsed JSON)
 * and, for BOS/EOS/pad ids the tokenizer config does not name, the model's config.json.
 */
export function loadHfTokenizer(
  tokenizerJson: unknown,
  tokenizerConfig: unknown = {},
  modelConfig: ModelTokenIds = {},
): TextTokenizer {
  if (!isObject(tokenizerJson) || !isObject(tokenizerJson.model)) {
    fail(ErrorCodes.MODEL, `tokenizer.json is ${describe(tokenizerJson)}; expected an object with a "model" field`);
  }
  if (!isObject(tokenizerConfig))
    fail(ErrorCodes.MODEL, `tokenizer_config.json is ${describe(tokenizerConfig)}; expected an object`);
  // The library expects every component field to be present (null where unused), as tokenizer.json files written
  // by `tokenizers` have.
  const complete: Json = {
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: null,
    ...tokenizerJson,
  };
  let tokenizer: Tokenizer;
  try {
    tokenizer = new Tokenizer(complete, tokenizerConfig);
  } catch (err) {
    fail(ErrorCodes.MODEL, `tokenizer.json cannot be loaded: ${(err as Error).message}`);
  }
  return new HfTokenizer(tokenizer, complete, tokenizerConfig, modelConfig);
}

/** Prepends BOS when the tokenizer wants it. */
export function withBos(tok: TextTokenizer, ids: number[]): number[] {
  return tok.addBos && tok.bosId !== null ? [tok.bosId, ...ids] : ids;
}
