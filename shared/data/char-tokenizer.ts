/**
 * A character-level tokenizer for the built-in demo model (stored as vocab.json next to it).
 * Real Hugging Face models bring their own tokenizer.json.
 */
import { fail, ErrorCodes } from '../errors.ts';
import type { ChatMessage, TextTokenizer } from './tokenizer.ts';

export interface CharVocab {
  type: 'char';
  /** token id → string; ids 0, 1, 2 are <pad>, <bos>, <eos> */
  tokens: string[];
}

export class CharTokenizer implements TextTokenizer {
  readonly padId = 0;
  readonly bosId = 1;
  readonly eosId = 2;
  readonly addBos = true;
  private readonly ids = new Map<string, number>();

  constructor(readonly vocab: CharVocab) {
    if (vocab.type !== 'char' || !Array.isArray(vocab.tokens))
      fail(ErrorCodes.MODEL, 'vocab.json should be {"type":"char","tokens":[...]}');
    vocab.tokens.forEach((t, i) => this.ids.set(t, i));
  }

  static fromAlphabet(alphabet: string): CharTokenizer {
    return new CharTokenizer({ type: 'char', tokens: ['<pad>', '<bos>', '<eos>', ...alphabet] });
  }

  get size(): number {
    return this.vocab.tokens.length;
  }

  get vocabSize(): number {
    return this.vocab.tokens.length;
  }

  encode(text: string): number[] {
    return Array.from(
      text,
      (ch) => this.ids.get(ch) ?? fail(ErrorCodes.DATA, `character ${JSON.stringify(ch)} is not in the vocabulary`),
    );
  }

  /** Decodes up to (not including) the first <eos>; drops <pad> and <bos>. */
  decode(ids: number[]): string {
    let out = '';
    for (const id of ids) {
      if (id === this.eosId) break;
      if (id > this.eosId && id < this.vocab.tokens.length) out += this.vocab.tokens[id];
    }
    return out;
  }

  renderChat(_messages: ChatMessage[], _addGenerationPrompt: boolean): string {
    return fail(ErrorCodes.DATA, 'this tokenizer has no chat template');
  }
}
