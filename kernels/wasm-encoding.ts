/**
 * The few pieces of the WebAssembly binary format the kernels' loader needs: LEB128 numbers and
 * sections, to redeclare a module's memory import shared or not (withMemoryImport, for the modules
 * built from C: compact-gemm.ts), and isShared.
 */

export function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
const name = (s: string) => [...uleb(s.length), ...[...s].map((c) => c.charCodeAt(0))];

/** Whether `memory` is a shared one (tfjs's threaded build): the imported memory must say so. */
export function isShared(memory: WebAssembly.Memory): boolean {
  return typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
}

/**
 * A module whose one import is env.memory, with that import redeclared shared (the threaded tfjs
 * build's memory) or not: a module that uses no atomics is otherwise the same for both.
 */
export function withMemoryImport(bytes: Uint8Array, shared: boolean): Uint8Array<ArrayBuffer> {
  const readUleb = (at: number): [value: number, next: number] => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      const byte = bytes[at++];
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return [value, at];
    }
  };
  const memoryLimits = shared ? [0x03, ...uleb(1), ...uleb(65536)] : [0x00, ...uleb(1)];
  const imports = section(2, vec([[...name('env'), ...name('memory'), 0x02, ...memoryLimits]]));
  const parts: number[][] = [[...bytes.subarray(0, 8)]];
  for (let at = 8; at < bytes.length; ) {
    const [size, body] = readUleb(at + 1);
    parts.push(bytes[at] === 2 ? imports : [...bytes.subarray(at, body + size)]);
    at = body + size;
  }
  return new Uint8Array(parts.flat());
}
