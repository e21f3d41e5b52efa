/**
 * Activation recomputation (gradient checkpointing; Chen et al. 2016): a transformer block keeps
 * only its input for the backward pass and runs its forward again there, so a step holds one
 * block's activations at a time instead of every block's. The recomputed forward is the same
 * operations on the same inputs, so the gradients are the same bits as without it (tested); the
 * cost is one more forward pass of the blocks.
 */
import * as tf from '@tensorflow/tfjs-core';
import { customOp } from './custom-op.ts';

type EngineState = { state: { activeTape: unknown } };

/**
 * Runs a tf.grads inside a gradient function. tfjs 4.22's engine keeps one tape: an inner
 * gradients() call outside a forward pass starts a fresh tape in its place and, when done, frees
 * its saved tensors and sets the tape to null, so the outer backward pass would then fail on its
 * own cleanup (and leak its saved tensors). Putting the outer tape back afterwards lets the inner
 * call free its recomputed activations at once (the point of recomputing) and the outer one finish
 * as usual. test/shared/model/recompute.test.ts fails if a tfjs upgrade changes this.
 */
function nestedGrads<T>(f: () => T): T {
  const engine = tf.engine() as unknown as EngineState;
  const outer = engine.state.activeTape;
  try {
    return f();
  } finally {
    engine.state.activeTape = outer;
  }
}

/** A block's forward: h and the constants it reads (which autodiff frees after the forward pass unless saved). */
export type Block = (h: tf.Tensor2D, constants: tf.Tensor2D[]) => tf.Tensor2D;

/**
 * block(h, constants) with its activations dropped after the forward pass and recomputed in the
 * backward one. trainables: every tensor the block differentiates besides h (its LoRA A and B),
 * which get their gradients here; the block may read them from its closure, as it may read any
 * tensor that outlives the step (weights). Tensors made during the forward pass (RoPE tables, the
 * mask) must come in `constants`: they are kept for the backward pass with h.
 */
export function recomputeInBackward(
  block: Block,
  h: tf.Tensor2D,
  trainables: tf.Tensor[],
  constants: tf.Tensor2D[],
): tf.Tensor2D {
  const op = customOp(([input], save) => {
    save([input, ...constants]);
    return {
      value: block(input as tf.Tensor2D, constants),
      gradFunc: (dy, [saved, ...kept]) =>
        nestedGrads(() =>
          tf.grads((x: tf.Tensor) => block(x as tf.Tensor2D, kept as tf.Tensor2D[]))(
            [saved, ...trainables],
            dy as tf.Tensor2D,
          ),
        ),
    };
  });
  return op(h, ...trainables) as tf.Tensor2D;
}
