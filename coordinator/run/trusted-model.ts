/**
 * The coordinator's own copy of the model, built on first use (its weights are loaded only then):
 * it computes the eval loss, recomputes results for the result checks, and does every micro-batch
 * of an --in-process run. One copy of the weights serves all three.
 */
import type { LoraConfig, ModelConfig } from '../../shared/config.ts';
import type { AdapterState, AdapterTensorSpec } from '../../shared/lora/adapter.ts';
import { FrozenBase } from '../../shared/lora/params.ts';
import type { BaseWeights } from '../../shared/model/compact-base.ts';
import { createModel, type CausalLM } from '../../shared/model/causal-lm.ts';
import {
  computeGradientsAsync,
  evaluateLoss,
  type GradientResult,
  type StepOptions,
} from '../../shared/train/gradients.ts';
import { runLocalJob, type InnerOptimizer } from '../../shared/train/local-steps.ts';
import { packMicroBatch, type Example, type MicroBatch } from '../../shared/train/micro-batch.ts';
import type { WorkItem } from '../engine/mesh.ts';

export class TrustedModel {
  private built: { model: CausalLM; base: FrozenBase } | null = null;

  constructor(
    private readonly config: ModelConfig,
    private readonly lora: LoraConfig,
    private readonly spec: AdapterTensorSpec[],
    private readonly inner: InnerOptimizer,
    /** the run's frozen base: float32 tensors, or compact ones (the file workers fetch) */
    private readonly loadWeights: () => BaseWeights,
    private readonly step: StepOptions = {},
    /** a base already built and shared with other runs (the standing pool's one copy); loadWeights is then unused */
    private readonly shared?: () => { model: CausalLM; base: FrozenBase },
    /**
     * makes the run's arithmetic variant the kernels' before each computation: a process holding several runs
     * (the standing pool) may hold runs of different variants
     */
    private readonly select: () => void = () => {},
  ) {}

  get(): { model: CausalLM; base: FrozenBase } {
    this.select();
    if (this.shared) return this.shared();
    return (this.built ??= { model: createModel(this.config), base: new FrozenBase(this.config, this.loadWeights()) });
  }

  /** The trusted result of a micro-batch (sync) or a local job, from `adapter` (what the workers hold). */
  recompute(work: WorkItem, adapter: AdapterState): Promise<GradientResult> {
    const { model, base } = this.get();
    return work.kind === 'grad'
      ? computeGradientsAsync(model, base, this.spec, adapter, this.lora, work.microBatch, this.step)
      : runLocalJob(
          model,
          base,
          this.spec,
          adapter,
          this.lora,
          work.job.microBatches,
          work.job.lr,
          this.inner,
          this.step,
        );
  }

  /** Mean token loss of `examples` under an adapter (forward only), or null without examples. */
  evaluator(
    examples: Example[] | undefined,
    microBatch: number,
    padId: number,
  ): ((adapter: AdapterState) => number) | null {
    if (!examples || examples.length === 0) return null;
    const microBatches: MicroBatch[] = [];
    for (let i = 0; i < examples.length; i += microBatch)
      microBatches.push(packMicroBatch(examples.slice(i, i + microBatch), padId, 0));
    return (adapter) => {
      const { model, base } = this.get();
      const { lossSum, tokenCount } = evaluateLoss(model, base, this.spec, adapter, this.lora, microBatches);
      return lossSum / Math.max(1, tokenCount);
    };
  }
}
