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
declare function atob(data: string): string;
/** The part of the WebAssembly JS API that shared/train/reduce-kernel.ts uses. */
declare namespace WebAssembly {
  class Memory {
    constructor(descriptor: { initial: number; maximum?: number });
    readonly buffer: ArrayBuffer;
  }
  class Module {
    constructor(bytes: Uint8Array<ArrayBuffer>);
  }
  class Instance {
    constructor(module: Module, imports: Record<string, Record<string, unknown>>);
    readonly exports: Record<string, unknown>;
  }
  function validate(bytes: Uint8Array<ArrayBuffer>): boolean;
}
