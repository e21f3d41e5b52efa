/**
 * The run's result checks (defence.ts) from its config (limits.defence), the codec's
 * tolerance floor, a fresh secret for which results are spot-checked, and one log line that says
 * what is on — or that nothing is.
 */
import { randomInt } from 'node:crypto';
import { CODEC_TOLERANCE_FLOOR, describeCodec, type CodecSpec } from '../../shared/protocol/wire-codec.ts';
import type { DefenceConfig } from '../engine/defence.ts';
import type { ResultChecks } from '../engine/mesh.ts';
import type { TrustedModel } from './trusted-model.ts';

export function resultChecks(
  defence: DefenceConfig,
  up: CodecSpec,
  trusted: TrustedModel,
  log: (line: string) => void,
): ResultChecks | undefined {
  const { spotCheck, outlierFactor, probation } = defence;
  if (spotCheck === 0 && outlierFactor === 0 && probation === 0) {
    log('defence: off (no spot checks, no probation, no outlier screen): a lying worker can bias this run');
    return undefined;
  }
  const asked = defence.tolerance;
  const tolerance = Math.max(asked, CODEC_TOLERANCE_FLOOR[up.name]);
  if (tolerance > asked)
    log(`result checks: tolerance raised from ${asked} to ${tolerance} for the ${describeCodec(up)} up codec`);
  log(
    `defence: spot checks on ${(100 * spotCheck).toFixed(1)} % of results and the first ${probation} of each worker, ` +
      `outlier screen at ${outlierFactor}× the step's median norm (0: off), tolerance ${tolerance}`,
  );
  return {
    spotCheck,
    probation,
    outlierFactor,
    tolerance,
    secret: randomInt(2 ** 31),
    recompute: (work, adapter) => trusted.recompute(work, adapter),
  };
}
