/**
 * Exact byte accounting of the mesh: every WebSocket frame, header included, by direction and
 * kind, plus the payload bytes (encoded float values) inside them, so protocol overhead is
 * measured, not estimated. TCP/IP and TLS framing below the WebSocket are not counted.
 */

/**
 * Bytes a WebSocket binary frame of `payload` bytes takes
 * (RFC 6455 §5.2; clients mask, servers do not; no compression).
 */
export function wsFrameBytes(payload: number, masked: boolean): number {
  const length = payload > 0xffff ? 8 : payload > 125 ? 2 : 0;
  return 2 + length + (masked ? 4 : 0) + payload;
}

export type OutKind = 'params' | 'assign' | 'other';

export interface Traffic {
  /** worker → coordinator, all frames */
  bytesIn: number;
  /** coordinator → worker, all frames */
  bytesOut: number;
  /** encoded float values inside results (the up payload) */
  payloadIn: number;
  /** encoded float values inside params frames (the down payload) */
  payloadOut: number;
  /** coordinator → worker by kind: params, assign (micro-batches: the data), other */
  outParams: number;
  outAssign: number;
  outOther: number;
  framesIn: number;
  framesOut: number;
  /** frames between relays (ingestion threads included) and their own workers, as the relays report them */
  relayedIn: number;
  relayedOut: number;
}

const ZERO: Traffic = {
  bytesIn: 0,
  bytesOut: 0,
  payloadIn: 0,
  payloadOut: 0,
  outParams: 0,
  outAssign: 0,
  outOther: 0,
  framesIn: 0,
  framesOut: 0,
  relayedIn: 0,
  relayedOut: 0,
};

export class ByteCounter {
  private readonly t: Traffic = { ...ZERO };

  countIn(bytes: number): void {
    this.t.bytesIn += bytes;
    this.t.framesIn++;
  }

  countPayloadIn(bytes: number): void {
    this.t.payloadIn += bytes;
  }

  countOut(bytes: number, kind: OutKind, payload = 0): void {
    this.t.bytesOut += bytes;
    this.t.framesOut++;
    this.t.payloadOut += payload;
    if (kind === 'params') this.t.outParams += bytes;
    else if (kind === 'assign') this.t.outAssign += bytes;
    else this.t.outOther += bytes;
  }

  /** a relay's report of its workers' traffic since its last one (bytes with frame headers, both ways) */
  countRelayed(bytesIn: number, bytesOut: number): void {
    this.t.relayedIn += bytesIn;
    this.t.relayedOut += bytesOut;
  }

  get relayedInTotal(): number {
    return this.t.relayedIn;
  }

  get relayedOutTotal(): number {
    return this.t.relayedOut;
  }

  get inTotal(): number {
    return this.t.bytesIn;
  }

  get outTotal(): number {
    return this.t.bytesOut;
  }

  snapshot(): Traffic {
    return { ...this.t };
  }
}

/** b − a, field by field. */
export function trafficSince(a: Traffic, b: Traffic): Traffic {
  const out = { ...ZERO };
  for (const k of Object.keys(ZERO) as (keyof Traffic)[]) out[k] = b[k] - a[k];
  return out;
}

export const NO_TRAFFIC = ZERO;
