/**
 * What the workers hold of the LoRA parameters, and the frames that bring them there. With f32 down
 * every version is the full vector (exact). With a lossy down codec a version is a delta from the
 * previous one, sent with error feedback in held form (HeldCopy, wire-codec.ts): the coordinator
 * keeps the workers' copy, so what one message could not carry goes with the next; the exact copy
 * stays with the trainer. Joiners get the held copy as an f32 keyframe, built once per version when
 * first asked for.
 */
import type { AdapterState } from '../../shared/lora/adapter.ts';
import { encodeMessage } from '../../shared/protocol/codec.ts';
import { flattenTensors, splitTensors, type RunManifest } from '../../shared/protocol/messages.ts';
import { encodeFloats, F32, HeldCopy, payloadBytes } from '../../shared/protocol/wire-codec.ts';

export interface ParamsFrame {
  frame: Uint8Array;
  /** encoded float bytes inside it (byte accounting) */
  payload: number;
}

export class ParamsPublisher {
  /** the current version; -1 before the first */
  version = -1;
  /** what workers hold, flat in manifest order */
  private readonly workersCopy: HeldCopy;
  private current: ParamsFrame | null = null;
  private keyframeOfVersion: ParamsFrame | null = null;

  constructor(private readonly manifest: RunManifest) {
    this.workersCopy = new HeldCopy(manifest.wire.down);
  }

  /** Makes `adapter` version `version`; returns the frame every worker that holds the previous one gets. */
  publish(version: number, adapter: AdapterState): ParamsFrame {
    // With f32 down the workers' copy is the exact vector itself, and nothing keeps the previous one (keyframes and
    // held() copy it): it is overwritten in place instead of a new one allocated (tens of MB at real shapes, whose
    // pages fault in afresh every step).
    const previousHeld = this.manifest.wire.down.name === 'f32' ? this.workersCopy.held : null;
    const exact = flattenTensors(adapter, this.manifest.adapter, previousHeld ?? undefined);
    const previous = this.version;
    this.version = version;
    this.keyframeOfVersion = null;
    const tensors = this.workersCopy.update(exact);
    this.current = tensors
      ? {
          frame: encodeMessage({ type: 'params', paramVersion: version, deltaFrom: previous, tensors }),
          payload: payloadBytes(tensors),
        }
      : this.keyframe()!;
    return this.current;
  }

  /**
   * A relay passes its parent's frame on as it came (so its workers hold the same bits as the parent's): `held` is
   * what the frame brings a worker to, which keyframes for joiners are built from.
   */
  forward(version: number, frame: ParamsFrame, held: Float32Array): void {
    this.version = version;
    this.keyframeOfVersion = null;
    this.workersCopy.adopt(held);
    this.current = frame;
  }

  /** The full f32 parameters of the current version (for a worker that joins); null before the first. */
  keyframe(): ParamsFrame | null {
    const held = this.workersCopy.held;
    if (!held) return null;
    if (!this.keyframeOfVersion) {
      const tensors = encodeFloats(held, F32);
      this.keyframeOfVersion = {
        frame: encodeMessage({ type: 'params', paramVersion: this.version, tensors }),
        payload: payloadBytes(tensors),
      };
    }
    return this.keyframeOfVersion;
  }

  /** The parameters workers hold, by tensor name (a copy): what a trusted recomputation must use. */
  held(): AdapterState {
    const held = this.workersCopy.held;
    return splitTensors(held ? held.slice() : new Float32Array(0), this.manifest.adapter);
  }
}
