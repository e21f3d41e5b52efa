/** The single-process executor: computes every micro-batch here, in order. The reference for exactness tests. */
import type { LoraConfig } from '../../shared/config.ts';
import { cloneAdapter, type AdapterState, type AdapterTensorSpec } from '../../shared/lora/adapter.ts';
import type { FrozenBase } from '../../shared/lora/params.ts';
import type { CausalLM } from '../../shared/model/causal-lm.ts';
import { computeGradients, type GradientResult, type StepOptions } from '../../shared/train/gradients.ts';
import { runLocalJob, type InnerOptimizer } from '../../shared/train/local-steps.ts';
import type { MicroBatch } from '../../shared/train/micro-batch.ts';
import { aggregateInOrder } from '../../shared/train/aggregate.ts';
import type { GradientExecutor, LocalJob, StepResults } from './trainer.ts';

export class InProcessExecutor implements GradientExecutor {
  private adapter: AdapterState = new Map();

  /** model and base are shared with the coordinator's eval (one copy of the weights) */
  constructor(
    private readonly model: CausalLM,
    private readonly base: FrozenBase,
    private readonly spec: AdapterTensorSpec[],
    private readonly lora: LoraConfig,
    private readonly inner?: InnerOptimizer,
    private readonly step: StepOptions = {},
    /** the run's train.reductionBlock (aggregate.ts) */
    private readonly reductionBlock?: number,
  ) {}

  publish(_paramVersion: number, adapter: AdapterState): void {
    this.adapter = cloneAdapter(adapter);
  }

  async compute(_step: number, _paramVersion: number, microBatches: MicroBatch[]): Promise<StepResults> {
    const results = microBatches.map((mb) =>
      computeGradients(this.model, this.base, this.spec, this.adapter, this.lora, mb, this.step),
    );
    return { results, sum: aggregateInOrder(results, this.reductionBlock) };
  }

  async computeLocal(_step: number, _paramVersion: number, jobs: LocalJob[]): Promise<GradientResult[]> {
    const results: GradientResult[] = [];
    for (const job of jobs)
      results.push(
        await runLocalJob(
          this.model,
          this.base,
          this.spec,
          this.adapter,
          this.lora,
          job.microBatches,
          job.lr,
          this.inner!,
          this.step,
        ),
      );
    return results;
  }
}
