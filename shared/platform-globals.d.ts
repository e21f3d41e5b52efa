// Globals that Node ≥ 20 and every browser loramesh supports both provide, declared for shared/'s
// own typecheck (shared/tsconfig.json has neither Node's types nor the DOM's). Only what shared/ uses.
declare const performance: { now(): number };
declare class TextEncoder {
  encode(input?: string): Uint8Array;
}
declare class TextDecoder {
  constructor(label?: string, options?: { fatal?: boolean });
  decode(input?: ArrayBufferView | ArrayBuffer): string;
}
declare function structuredClone<T>(value: T): T;
declare function setTimeout(handler: () => void, ms?: number): unknown;
