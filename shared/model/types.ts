/**
 * The interfaces every architecture implements and every caller uses: a forward pass over a
 * ParamSource, and how a linear layer is stored. Their own file, so the architectures (llama.ts,
 * gpt2.ts) and the dispatcher over them (causal-lm.ts) import it without importing each other.
 */
import type * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../config.ts';
import type { KvCache, RowSegment } from './attention.ts';

export interface ParamSource {
  /** y = x·Wᵀ (+ bias) for the linear layer at modulePath, plus its LoRA branch when it has one */
  linear(modulePath: string, x: tf.Tensor2D): tf.Tensor2D;
  /** rows of the token embedding for ids (N) → (N, d) */
  embed(ids: tf.Tensor1D): tf.Tensor2D;
  /** any other parameter (norm weights, position embeddings) */
  param(name: string): tf.Tensor;
  /**
   * true when every tensor param() returns is a constant of the loss (LoRA fine-tuning, inference):
   * ops may then skip those tensors' gradients. Unset when they are being trained.
   */
  readonly frozen?: boolean;
  /**
   * The LM head's two products without autodiff, where the head is frozen and has no LoRA branch:
   * the fused head + loss (shared/train/gradients.ts) then never holds the whole (N, V) logits.
   */
  readonly head?: FrozenProducts;
  /** recompute each block's forward in the backward pass (shared/model/recompute.ts) */
  readonly recompute?: boolean;
  /** the tensors being differentiated that the block at this module prefix reads (its LoRA A and B) */
  blockTensors?(prefix: string): tf.Tensor[];
}

/** A frozen linear layer's products, outside autodiff: y = x·Wᵀ and dx = dy·W. */
export interface FrozenProducts {
  forward(x: tf.Tensor2D): tf.Tensor2D;
  backward(dy: tf.Tensor2D): tf.Tensor2D;
}

export interface CausalLM {
  readonly config: ModelConfig;
  /** logits (B·T, V) for inputIds (B, T); with a cache, positions continue after cache.length */
  forward(params: ParamSource, inputIds: tf.Tensor2D, cache?: KvCache): tf.Tensor2D;
  /** the final normalized hidden states (B·T, d) that the LM head (params.linear('lm_head')) maps to logits */
  hidden(params: ParamSource, inputIds: tf.Tensor2D, cache?: KvCache): tf.Tensor2D;
  /**
   * hidden() for several micro-batches in one pass (the pool's multi-adapter pass): ids (ΣBᵢ·Tᵢ) are the
   * segments' ids one after another, each segment attends within itself, and each segment's rows come out as
   * hidden() gives them for that micro-batch alone (the same ops per row; attention per segment).
   */
  hiddenSegments(params: ParamSource, ids: tf.Tensor1D, segments: RowSegment[]): tf.Tensor2D;
}

/** How a linear layer's weight is stored in the checkpoint. */
export interface LinearStorage {
  weight: string;
  /** GPT-2's Conv1D stores (d_in, d_out) instead of (d_out, d_in) */
  transposed: boolean;
  bias?: string;
}
