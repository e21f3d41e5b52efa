/**
 * The compact base file: a model's frozen base in one compact format (shared/quant/formats.ts), as
 * one safetensors file the coordinator writes once and serves to every worker by sha256. Per model
 * tensor N (canonical name, shared/model/causal-lm.ts):
 *   - a matrix held compact (compactTensorNames: every linear weight and the token embedding)
 *       N.qdata       U8  [dataBytes]               the packed codes or values, little-endian words
 *       N.qscales     F32 [rows, blocksPerRow]      int8 scales or nf4 absmax (int8, nf4 only)
 *     or, for nf4 with double quantization, instead of N.qscales
 *       N.qdq_codes   U8  [dqCodeBytes]             one int8 code per block, zero-padded to a word
 *       N.qdq_scales  F32 [dqScaleCount]            one scale per doubleQuantBlockSize codes
 *       N.qdq_offset  F32 [1]                       the mean subtracted from the absmax values
 *     (rows, cols) is (d_out, d_in): GPT-2's Conv1D weights, stored (d_in, d_out), are transposed;
 *   - every other tensor (norms, biases, GPT-2's position embeddings): F32 under its own name N.
 * __metadata__: loramesh = "compact-base/1", base_format (describeBaseSpec), spec (the resolved
 * spec as JSON), shapes (each model tensor's checkpoint shape, JSON) and source_sha256 (the source
 * files' sha256 by name, JSON).
 *
 * Every size is known from the config and the spec alone (matrixLayout), so the header, offsets
 * included, is written before any tensor is quantized and a writer streams the file tensor by
 * tensor: a large checkpoint never sits in memory as float32 at once. The data runs in model order
 * (parameterShapes), each tensor's parts in the order above; every span is a whole number of
 * 32-bit words, so every one starts 4-byte aligned. Equal inputs give equal bytes.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../config.ts';
import { describe, ErrorCodes, fail } from '../errors.ts';
import {
  encodeSafetensorsHeader,
  type HeaderEntry,
  readSafetensorsHeader,
  type SafetensorsHeader,
} from '../formats/safetensors.ts';
import { parameterShapes } from '../model/causal-lm.ts';
import { type BaseWeights, compactTensorNames, packTensor } from '../model/compact-base.ts';
import { CompactWeight } from '../model/compact-linear.ts';
import {
  type BaseFormatSpec,
  checkPacked,
  describeBaseSpec,
  LITTLE_ENDIAN,
  type MatrixLayout,
  matrixLayout,
  type PackedMatrix,
  type ResolvedBaseSpec,
  resolveBaseSpec,
} from './formats.ts';

/** The value of __metadata__.loramesh: this layout, version 1. */
export const COMPACT_BASE_TAG = 'compact-base/1';
/** The compact file's name in a run manifest (workers fetch it by sha256; the name is for people). */
export const COMPACT_BASE_FILE = 'compact-base.safetensors';

/** One tensor of the file. */
export interface CompactFileTensor {
  name: string;
  dtype: 'U8' | 'F32';
  shape: number[];
  bytes: number;
}

/** What one model tensor becomes in the file. */
export interface CompactFilePart {
  /** the model tensor's canonical name */
  name: string;
  /** its shape in the checkpoint */
  storedShape: number[];
  /** the packed matrix's layout (rows = d_out), or null for a tensor kept float32 */
  layout: MatrixLayout | null;
  /** the file tensors it is written as, in write order */
  tensors: CompactFileTensor[];
}

export interface CompactFilePlan {
  spec: ResolvedBaseSpec;
  parts: CompactFilePart[];
  /** the file's first 8 + N bytes: header length and JSON header with every tensor's offsets */
  header: Uint8Array;
  /** bytes of the whole file */
  fileBytes: number;
}

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** Every model tensor's place in the file, in model order, from the config and spec alone. */
export function compactFileParts(config: ModelConfig, spec: BaseFormatSpec | ResolvedBaseSpec): CompactFilePart[] {
  const s = resolveBaseSpec(spec);
  const compact = compactTensorNames(config);
  const parts: CompactFilePart[] = [];
  for (const [name, storedShape] of parameterShapes(config)) {
    const how = compact.get(name);
    if (!how) {
      parts.push({ name, storedShape, layout: null, tensors: [floatTensor(name, storedShape)] });
      continue;
    }
    const [a, b] = storedShape;
    const layout = how.transposed ? matrixLayout(s, b, a) : matrixLayout(s, a, b);
    const tensors: CompactFileTensor[] = [
      { name: `${name}.qdata`, dtype: 'U8', shape: [layout.dataBytes], bytes: layout.dataBytes },
    ];
    if (layout.scaleCount > 0) tensors.push(floatTensor(`${name}.qscales`, [layout.rows, layout.blocksPerRow]));
    if (layout.dqCodeBytes > 0)
      tensors.push(
        { name: `${name}.qdq_codes`, dtype: 'U8', shape: [layout.dqCodeBytes], bytes: layout.dqCodeBytes },
        floatTensor(`${name}.qdq_scales`, [layout.dqScaleCount]),
        floatTensor(`${name}.qdq_offset`, [1]),
      );
    parts.push({ name, storedShape, layout, tensors });
  }
  return parts;
}

function floatTensor(name: string, shape: number[]): CompactFileTensor {
  return { name, dtype: 'F32', shape, bytes: 4 * numel(shape) };
}

/** __metadata__ of a compact file: everything but source_sha256 follows from the config and spec. */
function compactMetadata(
  parts: CompactFilePart[],
  spec: ResolvedBaseSpec,
  sourceSha256: Record<string, string>,
): Record<string, string> {
  return {
    loramesh: COMPACT_BASE_TAG,
    base_format: describeBaseSpec(spec),
    spec: JSON.stringify(spec),
    shapes: shapesJson(parts),
    source_sha256: JSON.stringify(sourceSha256),
  };
}

const shapesJson = (parts: CompactFilePart[]) =>
  JSON.stringify(Object.fromEntries(parts.map((p) => [p.name, p.storedShape])));

/** The whole file's layout and header, before any tensor is read. sourceSha256: the source files by name. */
export function planCompactFile(
  config: ModelConfig,
  spec: BaseFormatSpec | ResolvedBaseSpec,
  sourceSha256: Record<string, string>,
): CompactFilePlan {
  const s = resolveBaseSpec(spec);
  const parts = compactFileParts(config, s);
  const entries = new Map<string, HeaderEntry>();
  let offset = 0;
  for (const t of parts.flatMap((p) => p.tensors)) {
    entries.set(t.name, { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes] });
    offset += t.bytes;
  }
  const header = encodeSafetensorsHeader(entries, compactMetadata(parts, s, sourceSha256));
  return { spec: s, parts, header, fileBytes: header.length + offset };
}

const bytesOf = (floats: Float32Array): Uint8Array => {
  if (!LITTLE_ENDIAN) fail(ErrorCodes.SAFETENSORS, 'compact base files are written on little-endian platforms only');
  return new Uint8Array(floats.buffer, floats.byteOffset, floats.byteLength);
};

/** The bytes of a part's file tensors, in order, from the model tensor's values as stored. */
export function encodeCompactPart(
  config: ModelConfig,
  spec: ResolvedBaseSpec,
  part: CompactFilePart,
  values: Float32Array,
): Uint8Array[] {
  if (values.length !== numel(part.storedShape))
    fail(
      ErrorCodes.SHAPE,
      `tensor ${part.name} has ${values.length} values; expected [${part.storedShape}] from config.json`,
    );
  const packed = packTensor(config, part.name, values, part.storedShape, spec);
  if (!packed) return [bytesOf(values)];
  const dq = packed.doubleQuant;
  const chunks = dq
    ? [packed.data, dq.codes, bytesOf(dq.scales), bytesOf(Float32Array.of(dq.offset))]
    : [packed.data, ...(packed.scales.length > 0 ? [bytesOf(packed.scales)] : [])];
  chunks.forEach((chunk, i) => {
    if (chunk.byteLength !== part.tensors[i].bytes)
      fail(ErrorCodes.SHAPE, `${part.tensors[i].name}: ${chunk.byteLength} bytes, planned ${part.tensors[i].bytes}`);
  });
  return chunks;
}

/**
 * Writes a compact file through `write`, header first, then tensor by tensor: `valuesOf` is asked
 * for one model tensor's values (as stored in the checkpoint) at a time, in model order, and what it
 * returns may be dropped as soon as the call for the next one starts.
 */
export function writeCompactBase(
  config: ModelConfig,
  spec: BaseFormatSpec | ResolvedBaseSpec,
  sourceSha256: Record<string, string>,
  valuesOf: (name: string, storedShape: number[]) => Float32Array,
  write: (bytes: Uint8Array) => void,
): CompactFilePlan {
  const plan = planCompactFile(config, spec, sourceSha256);
  write(plan.header);
  for (const part of plan.parts)
    for (const chunk of encodeCompactPart(config, plan.spec, part, valuesOf(part.name, part.storedShape))) write(chunk);
  return plan;
}

/** A file tensor's bytes, given its name and checked header entry (a view or a fresh array; never reused). */
export type SpanReader = (name: string, entry: HeaderEntry) => Uint8Array;

/**
 * A compact file's contents as the frozen base FrozenBase takes (CompactWeights and float32
 * tensors), after checking everything: the tag, the spec (equal to `expected` when given), the
 * shapes, and exactly the tensors the config and spec call for with their dtypes and shapes (a
 * missing, extra or misshapen one is LM_ERR_MODEL, naming it); each packed matrix passes checkPacked
 * and every scale is finite. `file` names it in errors.
 */
export function readCompactBase(
  config: ModelConfig,
  header: SafetensorsHeader,
  span: SpanReader,
  expected?: BaseFormatSpec | ResolvedBaseSpec,
  file = 'compact base file',
): BaseWeights {
  const { metadata, entries } = header;
  if (metadata.loramesh !== COMPACT_BASE_TAG)
    fail(
      ErrorCodes.MODEL,
      `${file} is not a loramesh compact base: __metadata__.loramesh is ${describe(metadata.loramesh)}, ` +
        `expected ${JSON.stringify(COMPACT_BASE_TAG)}`,
    );
  const spec = resolveBaseSpec(parseJson(metadata.spec, `${file}: __metadata__.spec`), `${file}: __metadata__.spec`);
  if (expected !== undefined && JSON.stringify(resolveBaseSpec(expected)) !== JSON.stringify(spec))
    fail(
      ErrorCodes.MODEL,
      `${file} holds ${describeBaseSpec(spec)}; the run's base format is ${describeBaseSpec(expected)}`,
    );
  const parts = compactFileParts(config, spec);
  if (metadata.shapes !== shapesJson(parts))
    fail(ErrorCodes.MODEL, `${file}: __metadata__.shapes does not match config.json's tensor shapes`);
  checkTensorList(parts, entries, file);
  const weights: BaseWeights = new Map();
  try {
    for (const part of parts) {
      const read = (i: number) => span(part.tensors[i].name, entries.get(part.tensors[i].name)!);
      if (part.layout === null) {
        weights.set(part.name, tf.tensor(finiteFloats(read(0), part.tensors[0].name, file), part.storedShape));
        continue;
      }
      weights.set(part.name, new CompactWeight(packedFrom(part, spec, read, file), part.storedShape));
    }
  } catch (err) {
    for (const w of weights.values()) w.dispose();
    throw err;
  }
  return weights;
}

/** readCompactBase of a whole file held in memory (a browser's verified download). */
export function decodeCompactBase(
  config: ModelConfig,
  bytes: Uint8Array,
  expected?: BaseFormatSpec | ResolvedBaseSpec,
  file?: string,
): BaseWeights {
  const header = readSafetensorsHeader(bytes);
  const at = header.dataStart;
  return readCompactBase(
    config,
    header,
    (_, entry) => bytes.subarray(at + entry.data_offsets[0], at + entry.data_offsets[1]),
    expected,
    file,
  );
}

function parseJson(text: string | undefined, what: string): unknown {
  try {
    return JSON.parse(text ?? '');
  } catch {
    return fail(ErrorCodes.MODEL, `${what} should be JSON, got ${describe(text)}`);
  }
}

/** Exactly the planned tensors, each with its dtype and shape. */
function checkTensorList(parts: CompactFilePart[], entries: Map<string, HeaderEntry>, file: string): void {
  const planned = new Map(parts.flatMap((p) => p.tensors).map((t) => [t.name, t]));
  for (const [name, t] of planned) {
    const entry = entries.get(name);
    if (!entry) fail(ErrorCodes.MODEL, `${file}: tensor ${name} is missing`);
    if (entry.dtype !== t.dtype || entry.shape.join(',') !== t.shape.join(','))
      fail(
        ErrorCodes.MODEL,
        `${file}: tensor ${name} is ${entry.dtype} [${entry.shape}]; expected ${t.dtype} [${t.shape}]`,
      );
  }
  for (const name of entries.keys())
    if (!planned.has(name)) fail(ErrorCodes.MODEL, `${file}: tensor ${name} is not part of this model's compact base`);
}

/** A span as float32 values (a fresh copy: the caller's buffer may be large or reused), every one finite. */
function finiteFloats(bytes: Uint8Array, name: string, file: string): Float32Array {
  if (!LITTLE_ENDIAN) fail(ErrorCodes.SAFETENSORS, 'compact base files are read on little-endian platforms only');
  const floats = new Float32Array(new Uint8Array(bytes).buffer);
  for (let i = 0; i < floats.length; i++)
    if (!Number.isFinite(floats[i])) fail(ErrorCodes.NON_FINITE, `${file}: ${name}[${i}] is ${floats[i]}`);
  return floats;
}

function packedFrom(
  part: CompactFilePart,
  spec: ResolvedBaseSpec,
  read: (i: number) => Uint8Array,
  file: string,
): PackedMatrix {
  const { rows, cols } = part.layout!;
  const raw = read(0);
  // CompactWeight views the bytes as int32 words: they must start on a word.
  const data = raw.byteOffset % 4 === 0 ? raw : raw.slice();
  const names = part.tensors.map((t) => t.name);
  const floats = (i: number) => finiteFloats(read(i), names[i], file);
  const packed: PackedMatrix =
    part.layout!.dqCodeBytes > 0
      ? {
          spec,
          rows,
          cols,
          data,
          scales: new Float32Array(0),
          doubleQuant: { codes: read(1).slice(), scales: floats(2), offset: floats(3)[0] },
        }
      : { spec, rows, cols, data, scales: names.length > 1 ? floats(1) : new Float32Array(0) };
  checkPacked(packed);
  return packed;
}
