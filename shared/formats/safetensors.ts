/**
 * safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian u64 header
 * length N, N bytes of UTF-8 JSON header
 *   {"__metadata__": {string: string}, "<name>": {"dtype", "shape", "data_offsets": [begin, end]}}
 * padded with spaces so the data section starts 8-byte aligned, then the tensors' raw
 * little-endian bytes, offsets relative to the start of that data section.
 *
 * Decoding treats the bytes as untrusted: the header length, every dtype, shape and offset are
 * checked before any tensor is made. Typed arrays use the platform's byte order; every platform
 * Node and the browsers run on is little-endian, as the format is.
 */
import { ErrorCodes, fail } from '../errors.ts';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from './half.ts';

export type SafetensorsDType = 'F32' | 'F16' | 'BF16' | 'I32' | 'I64' | 'U8';

export interface TensorEntry {
  /** the dtype stored in the file */
  dtype: SafetensorsDType;
  shape: number[];
  /**
   * F32/F16/BF16 → Float32Array, I32/I64 → Int32Array, U8 → Uint8Array (raw bytes: the packed codes
   * of a compact base, shared/quant/compact-file.ts). F32, I32 and U8 data is a view into the input
   * bytes (no copy) when it is aligned there; copy it before reusing the input buffer.
   */
  data: Float32Array | Int32Array | Uint8Array;
}

export interface TensorInput {
  data: Float32Array | Int32Array | Uint8Array;
  shape: number[];
  /** default: F32 for a Float32Array, I32 for an Int32Array, U8 for a Uint8Array */
  dtype?: SafetensorsDType;
}

/** One tensor's header entry, as checked by readSafetensorsHeader. */
export interface HeaderEntry {
  dtype: SafetensorsDType;
  shape: number[];
  /** byte range [begin, end) relative to the start of the data section */
  data_offsets: [number, number];
}

export interface SafetensorsHeader {
  metadata: Record<string, string>;
  /** in the order the header lists them */
  entries: Map<string, HeaderEntry>;
  /** absolute byte offset of the data section: 8 + N */
  dataStart: number;
}

const ITEM_BYTES: Record<SafetensorsDType, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, U8: 1 };
/** The reference implementation refuses headers over 100 MB too. */
export const MAX_HEADER_BYTES = 100_000_000;

const METADATA_KEY = '__metadata__';

const numel = (shape: number[]) => shape.reduce((n, d) => n * d, 1);
const isShape = (shape: unknown): shape is number[] =>
  Array.isArray(shape) && shape.every((d) => Number.isSafeInteger(d) && d >= 0);

/** A header value for an error message: JSON, cut short. */
function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 80)}…` : text;
}

function tensorBytes(name: string, tensor: TensorInput, dtype: SafetensorsDType): Uint8Array {
  const { data } = tensor;
  const asBytes = (view: ArrayBufferView) => new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  if (data instanceof Float32Array) {
    if (dtype === 'F32') return asBytes(data);
    if (dtype === 'F16') return asBytes(f32ToF16(data));
    if (dtype === 'BF16') return asBytes(f32ToBf16(data));
  } else if (data instanceof Int32Array) {
    if (dtype === 'I32') return asBytes(data);
    if (dtype === 'I64') {
      const wide = new Int32Array(data.length * 2); // (low, high) word pairs, little-endian
      for (let i = 0; i < data.length; i++) {
        wide[2 * i] = data[i];
        wide[2 * i + 1] = data[i] >> 31; // sign extension
      }
      return asBytes(wide);
    }
  } else if (data instanceof Uint8Array && dtype === 'U8') return data;
  const kind = (data as object)?.constructor?.name ?? typeof data;
  return fail(
    ErrorCodes.SAFETENSORS,
    `tensor ${name}: dtype ${show(dtype)} cannot be written from a ${kind}; ` +
      'expected F32/F16/BF16 from a Float32Array, I32/I64 from an Int32Array or U8 from a Uint8Array',
  );
}

/**
 * The first 8 + N bytes of a file: the header length and the JSON header, entries in sorted name
 * order, padded with spaces so the data section starts 8-byte aligned. Each entry's data_offsets
 * are the caller's: a streaming writer knows every tensor's size before it has any of the bytes.
 */
export function encodeSafetensorsHeader(
  entries: Map<string, HeaderEntry>,
  metadata?: Record<string, string>,
): Uint8Array {
  // Built entry by entry (not JSON.stringify of one object) so key order is exactly this order even
  // for names like "0", and a name like "__proto__" stays an ordinary key.
  const headerParts: string[] = [];
  if (metadata) {
    const keys = Object.keys(metadata).sort();
    for (const key of keys) {
      if (typeof metadata[key] !== 'string')
        fail(ErrorCodes.SAFETENSORS, `metadata.${key} should be a string, got ${show(metadata[key])}`);
    }
    headerParts.push(
      `${JSON.stringify(METADATA_KEY)}:` +
        `{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`).join(',')}}`,
    );
  }
  for (const name of [...entries.keys()].sort()) {
    if (name === METADATA_KEY) fail(ErrorCodes.SAFETENSORS, `a tensor cannot be named ${METADATA_KEY}`);
    const { dtype, shape, data_offsets } = entries.get(name)!;
    if (!isShape(shape))
      fail(ErrorCodes.SAFETENSORS, `tensor ${name}: shape ${show(shape)} should be a list of non-negative integers`);
    headerParts.push(`${JSON.stringify(name)}:${JSON.stringify({ dtype, shape, data_offsets })}`);
  }
  const json = new TextEncoder().encode(`{${headerParts.join(',')}}`);
  const headerLength = Math.ceil(json.length / 8) * 8; // 8 + N is then a multiple of 8
  const out = new Uint8Array(8 + headerLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLength), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length); // space padding
  return out;
}

/** The dtype a tensor is written as: its own, else the natural one of its array. */
const dtypeOf = (tensor: TensorInput): SafetensorsDType =>
  tensor.dtype ?? (tensor.data instanceof Int32Array ? 'I32' : tensor.data instanceof Uint8Array ? 'U8' : 'F32');

/**
 * Encodes tensors (written in sorted name order, so equal inputs give equal bytes) and optional
 * string metadata. F16 and BF16 are rounded to nearest even from the float32 values.
 */
export function encodeSafetensors(tensors: Record<string, TensorInput>, metadata?: Record<string, string>): Uint8Array {
  const entries = new Map<string, HeaderEntry>();
  const payloads: Uint8Array[] = [];
  let dataBytes = 0;
  for (const name of Object.keys(tensors).sort()) {
    const tensor = tensors[name];
    const dtype = dtypeOf(tensor);
    if (!isShape(tensor.shape))
      fail(
        ErrorCodes.SAFETENSORS,
        `tensor ${name}: shape ${show(tensor.shape)} should be a list of non-negative integers`,
      );
    if (tensor.data.length !== numel(tensor.shape)) {
      fail(
        ErrorCodes.SAFETENSORS,
        `tensor ${name}: ${tensor.data.length} values do not fill shape [${tensor.shape}] ` +
          `(${numel(tensor.shape)} values)`,
      );
    }
    const bytes = tensorBytes(name, tensor, dtype);
    entries.set(name, { dtype, shape: tensor.shape, data_offsets: [dataBytes, dataBytes + bytes.length] });
    payloads.push(bytes);
    dataBytes += bytes.length;
  }
  const header = encodeSafetensorsHeader(entries, metadata);
  const out = new Uint8Array(header.length + dataBytes);
  out.set(header);
  let at = header.length;
  for (const bytes of payloads) {
    out.set(bytes, at);
    at += bytes.length;
  }
  return out;
}

/**
 * Reads and checks the header without touching tensor data. A streaming loader reads the first
 * 8 + N bytes, passes them with the file's full length, then reads each tensor's data_offsets
 * span (relative to dataStart) and hands it to decodeTensorData.
 */
export function readSafetensorsHeader(bytes: Uint8Array, fileLength = bytes.length): SafetensorsHeader {
  if (bytes.length < 8)
    fail(ErrorCodes.SAFETENSORS, `file is ${bytes.length} bytes; expected at least the 8-byte header length`);
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (headerLength > BigInt(MAX_HEADER_BYTES))
    fail(ErrorCodes.SAFETENSORS, `header length ${headerLength} is over the ${MAX_HEADER_BYTES}-byte cap`);
  if (headerLength > BigInt(fileLength - 8)) {
    fail(
      ErrorCodes.SAFETENSORS,
      `header length ${headerLength} runs past the end of the file (${fileLength} bytes, so at most ${fileLength - 8})`,
    );
  }
  const dataStart = 8 + Number(headerLength);
  if (bytes.length < dataStart)
    fail(ErrorCodes.SAFETENSORS, `got ${bytes.length} bytes; expected the whole header, ${dataStart} bytes`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, dataStart)));
  } catch (err) {
    fail(ErrorCodes.SAFETENSORS, `header (${headerLength} bytes) is not UTF-8 JSON: ${(err as Error).message}`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header))
    fail(ErrorCodes.SAFETENSORS, `header should be a JSON object, got ${show(header)}`);

  const dataLength = fileLength - dataStart;
  const metadata: Record<string, string> = {};
  const entries = new Map<string, HeaderEntry>();
  for (const [name, raw] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      if (raw === null) continue; // the reference writer may emit null for "no metadata"
      if (typeof raw !== 'object' || Array.isArray(raw))
        fail(ErrorCodes.SAFETENSORS, `${METADATA_KEY} should be an object of strings, got ${show(raw)}`);
      for (const [key, value] of Object.entries(raw)) {
        if (typeof value !== 'string')
          fail(ErrorCodes.SAFETENSORS, `${METADATA_KEY}.${key} should be a string, got ${show(value)}`);
        // safe for "__proto__"
        Object.defineProperty(metadata, key, { value, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
      fail(ErrorCodes.SAFETENSORS, `tensor ${name}: entry should be an object, got ${show(raw)}`);
    const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
    if (typeof dtype !== 'string' || !Object.hasOwn(ITEM_BYTES, dtype)) {
      fail(
        ErrorCodes.SAFETENSORS,
        `tensor ${name}: dtype ${show(dtype)} is not supported; expected one of ${Object.keys(ITEM_BYTES).join(', ')}`,
      );
    }
    if (!isShape(shape))
      fail(ErrorCodes.SAFETENSORS, `tensor ${name}: shape ${show(shape)} should be a list of non-negative integers`);
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1] ||
      offsets[1] > dataLength
    ) {
      fail(
        ErrorCodes.SAFETENSORS,
        `tensor ${name}: data_offsets ${show(offsets)} should be [begin, end] ` +
          `with 0 ≤ begin ≤ end ≤ ${dataLength} (the data section's length)`,
      );
    }
    const [begin, end] = offsets as [number, number];
    const expected = numel(shape) * ITEM_BYTES[dtype as SafetensorsDType];
    if (end - begin !== expected) {
      fail(
        ErrorCodes.SAFETENSORS,
        `tensor ${name}: data_offsets ${show(offsets)} span ${end - begin} bytes; ` +
          `expected ${expected} for ${dtype} of shape [${shape}]`,
      );
    }
    entries.set(name, { dtype: dtype as SafetensorsDType, shape, data_offsets: [begin, end] });
  }

  // No two tensors may share bytes. Empty tensors own no bytes, so they are left out.
  const spans = [...entries]
    .filter(([, e]) => e.data_offsets[1] > e.data_offsets[0])
    .sort(([, a], [, b]) => a.data_offsets[0] - b.data_offsets[0]);
  for (let i = 1; i < spans.length; i++) {
    const [prevName, prev] = spans[i - 1];
    const [name, entry] = spans[i];
    if (entry.data_offsets[0] < prev.data_offsets[1]) {
      fail(
        ErrorCodes.SAFETENSORS,
        `tensor ${name}: data_offsets ${show(entry.data_offsets)} ` +
          `overlap tensor ${prevName}'s ${show(prev.data_offsets)}`,
      );
    }
  }
  return { metadata, entries, dataStart };
}

/**
 * Decodes one tensor from exactly its bytes (the data_offsets span). A span at an offset that is
 * not a multiple of its item size (e.g. a Node Buffer slice) is copied to an aligned buffer first.
 */
export function decodeTensorData(name: string, entry: HeaderEntry, span: Uint8Array): TensorEntry {
  const { dtype, shape } = entry;
  const expected = numel(shape) * ITEM_BYTES[dtype];
  if (span.length !== expected)
    fail(
      ErrorCodes.SAFETENSORS,
      `tensor ${name}: got ${span.length} bytes; expected ${expected} for ${dtype} of shape [${shape}]`,
    );
  const alignment = Math.min(ITEM_BYTES[dtype], 4); // I64 is read as 32-bit word pairs
  const aligned = span.byteOffset % alignment === 0 ? span : span.slice();
  const { buffer, byteOffset } = aligned;
  const count = numel(shape);
  switch (dtype) {
    case 'F32':
      return { dtype, shape, data: new Float32Array(buffer, byteOffset, count) };
    case 'I32':
      return { dtype, shape, data: new Int32Array(buffer, byteOffset, count) };
    case 'U8':
      return { dtype, shape, data: new Uint8Array(buffer, byteOffset, count) };
    case 'F16':
      return { dtype, shape, data: f16ToF32(new Uint16Array(buffer, byteOffset, count)) };
    case 'BF16':
      return { dtype, shape, data: bf16ToF32(new Uint16Array(buffer, byteOffset, count)) };
    case 'I64': {
      const words = new Int32Array(buffer, byteOffset, count * 2); // (low, high) pairs
      const data = new Int32Array(count);
      for (let i = 0; i < count; i++) {
        const low = words[2 * i];
        const high = words[2 * i + 1];
        if (high !== low >> 31) {
          const value = (BigInt(high) << 32n) | BigInt(low >>> 0);
          fail(ErrorCodes.SAFETENSORS, `tensor ${name}: I64 value ${value} at index ${i} does not fit in int32`);
        }
        data[i] = low;
      }
      return { dtype, shape, data };
    }
  }
}

export function decodeSafetensors(bytes: Uint8Array): {
  metadata: Record<string, string>;
  tensors: Map<string, TensorEntry>;
} {
  const { metadata, entries, dataStart } = readSafetensorsHeader(bytes);
  const tensors = new Map<string, TensorEntry>();
  for (const [name, entry] of entries) {
    const [begin, end] = entry.data_offsets;
    tensors.set(name, decodeTensorData(name, entry, bytes.subarray(dataStart + begin, dataStart + end)));
  }
  return { metadata, tensors };
}
