/**
 * A joining worker's memory against the run, as data: per kernel backend what the run needs
 * (shared/model/memory-plan.ts, planned once), and the verdict for a worker's stated limit. The root's mesh checks
 * its own workers with it; a relay or ingestion thread gets the same table in its welcome (RelayPolicy.memory) and
 * checks its workers with it, so a worker refused at the root is refused behind a relay too, with the same words.
 */
import type { MemoryNeeds } from '../../shared/protocol/messages.ts';
import {
  planMemory,
  smallerBaseFormats,
  type KernelBackend,
  type MemoryPlan,
  type MemoryPlanInput,
} from '../../shared/model/memory-plan.ts';
import type { MemoryVerdict } from './mesh.ts';

export const KERNEL_BACKENDS: readonly KernelBackend[] = ['wasm', 'webgpu', 'tensorflow', 'cpu'];

/** The kernels a worker's stated backend runs (anything else computes on the plain CPU path). */
export function kernelBackendOf(backend: string): KernelBackend {
  return backend === 'wasm' || backend === 'webgpu' || backend === 'tensorflow' ? backend : 'cpu';
}

const bytesOf = (plan: MemoryPlan) => plan.total - plan.parts.runtime;

/** What the run needs of a worker on `input.backend`: as planned, recomputing, and in each smaller base format. */
export function memoryNeeds(input: MemoryPlanInput): MemoryNeeds {
  const recomputing = planMemory({ ...input, recompute: true });
  return {
    bytes: bytesOf(planMemory(input)),
    recomputing: bytesOf(recomputing),
    summary: recomputing.summary,
    smaller: smallerBaseFormats(input).map((o) => ({ format: o.spec.format, bytes: bytesOf(o.plan) })),
  };
}

/** Fits as planned, fits recomputing activations, or refused in one line with the numbers and a smaller format. */
export function memoryVerdict(needs: MemoryNeeds, backend: string, limitBytes: number): MemoryVerdict {
  if (needs.bytes <= limitBytes) return { fits: true, recompute: false };
  if (needs.recomputing <= limitBytes) return { fits: true, recompute: true };
  const fits = needs.smaller.find((o) => o.bytes <= limitBytes);
  const hint = fits ? `; --base-format ${fits.format} needs ${(fits.bytes / 1e9).toFixed(2)} GB` : '';
  return {
    fits: false,
    why:
      `the run needs ${(needs.recomputing / 1e9).toFixed(2)} GB even recomputing activations (${needs.summary}); ` +
      `this ${backend} worker can hold ${(limitBytes / 1e9).toFixed(2)} GB${hint}`,
  };
}

/** A mesh's memory check from a table of needs per kernel backend (a backend missing from it is not checked). */
export function memoryCheckFrom(
  needsOf: (kernels: KernelBackend) => MemoryNeeds | undefined,
): (backend: string, limitBytes: number) => MemoryVerdict {
  return (backend, limitBytes) => {
    const needs = needsOf(kernelBackendOf(backend));
    return needs ? memoryVerdict(needs, backend, limitBytes) : { fits: true, recompute: false };
  };
}
