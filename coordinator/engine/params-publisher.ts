/**
 * What the workers hold of the LoRA parameters, and the frames that bring them there. With f32 down
 * every version is the full vector (exact). With a lossy down codec a version is Q(exact − shadow):
 * the shadow (what workers hold) adds the decoded delta, so what one message could not carry goes
 * with the next (error feedback); the exact copy stays with the trainer. Joiners get the shadow as
 * an f32 keyframe, built once per version when first asked for.
 */
import type { AdapterState } from '../../shared/lora/adapter.ts';
import { encodeMessage } from '../../shared/protocol/codec.ts';
import { flattenTensors, splitTensors, type RunManifest } from '../../shared/protocol/messages.ts';
import { decodeFloats, encodeFloats, F32, payloadBytes } from '../../shared/protocol/wire-codec.ts';

export interface ParamsFrame {
  frame: Uint8Array;
  /** encoded float bytes inside it (byte accounting) */
  payload: number;
}

export class ParamsPublisher {
  /** the current version; -1 before the first */
  version = -1;
  /** what workers hold, flat in manifest order */
  private shadow: Float32Array | null = null;
  private current: ParamsFrame | null = null;
  private keyframeOfVersion: ParamsFrame | null = null;

  constructor(private readonly manifest: RunManifest) {}

  /** Makes `adapter` version `version`; returns the frame every worker that holds the previous one gets. */
  publish(version: number, adapter: AdapterState): ParamsFrame {
    const exact = flattenTensors(adapter, this.manifest.adapter);
    const down = this.manifest.wire.down;
    const previous = this.version;
    this.version = version;
    this.keyframeOfVersion = null;
    if (down.name === 'f32' || !this.shadow) {
      this.shadow = exact;
      this.current = this.keyframe()!;
    } else {
      const delta = new Float32Array(exact.length);
      for (let i = 0; i < delta.length; i++) delta[i] = exact[i] - this.shadow[i];
      const tensors = encodeFloats(delta, down);
      const decoded = decodeFloats(tensors);
      for (let i = 0; i < decoded.length; i++) this.shadow[i] += decoded[i];
      this.current = {
        frame: encodeMessage({ type: 'params', paramVersion: version, deltaFrom: previous, tensors }),
        payload: payloadBytes(tensors),
      };
    }
    return this.current;
  }

  /** The full f32 parameters of the current version (for a worker that joins); null before the first. */
  keyframe(): ParamsFrame | null {
    if (!this.shadow) return null;
    if (!this.keyframeOfVersion) {
      const tensors = encodeFloats(this.shadow, F32);
      this.keyframeOfVersion = {
        frame: encodeMessage({ type: 'params', paramVersion: this.version, tensors }),
        payload: payloadBytes(tensors),
      };
    }
    return this.keyframeOfVersion;
  }

  /** The parameters workers hold, by tensor name (a copy): what a trusted recomputation must use. */
  held(): AdapterState {
    return splitTensors(this.shadow ? this.shadow.slice() : new Float32Array(0), this.manifest.adapter);
  }
}
