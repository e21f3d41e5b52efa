/**
 * The analysis toolkit's edges: PEFT adapter folders and base models in as float64 matrices,
 * JSON and figures (SVG, plus PNG rendered by resvg) out. Everything read is checked here —
 * missing files, shapes, non-finite values — with errors naming the file and tensor.
 */
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type * as tf from '@tensorflow/tfjs-core';
import { loraScaling, type LoraConfig, type ModelConfig } from '../../shared/config.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import { decodePeftAdapter, loraConfigFromPeft } from '../../shared/formats/peft.ts';
import { linearShape, linearStorage } from '../../shared/model/causal-lm.ts';
import type { AdapterMatrices, BaseMatrices } from '../../shared/analysis/report.ts';
import { denseSvd, matrixFrom } from '../../shared/analysis/svd.ts';
import type { Matrix } from 'ml-matrix';
import { readAdapterDir } from './adapter-io.ts';
import { writeAtomic } from './run-dir.ts';
import { optionalPackage } from '../../node/optional-package.ts';

export interface LoadedAdapterMatrices extends AdapterMatrices {
  lora: LoraConfig;
}

function requireDir(dir: string, what: string): void {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) fail(ErrorCodes.MODEL, `${what} ${dir}: not a directory`);
}

/**
 * A PEFT adapter folder as matrices. With the base model's config the tensors are also checked
 * against the model's shapes (readAdapterDir); without, shapes come from the file.
 */
export function loadAdapterMatrices(dir: string, model?: ModelConfig): LoadedAdapterMatrices {
  requireDir(dir, 'adapter');
  const configPath = join(dir, 'adapter_config.json');
  const weightsPath = join(dir, 'adapter_model.safetensors');
  if (!existsSync(configPath) || !existsSync(weightsPath))
    fail(ErrorCodes.MODEL, `adapter ${dir}: expected adapter_config.json and adapter_model.safetensors`);
  let lora: LoraConfig;
  const raw = new Map<
    string,
    { A: Float32Array; B: Float32Array; aShape: [number, number]; bShape: [number, number] }
  >();
  if (model) {
    const loaded = readAdapterDir(dir, model);
    lora = loaded.lora;
    for (const t of loaded.spec.filter((s) => s.which === 'A')) {
      const b = loaded.spec.find((s) => s.modulePath === t.modulePath && s.which === 'B')!;
      raw.set(t.modulePath, {
        A: loaded.state.get(t.name)!,
        B: loaded.state.get(b.name)!,
        aShape: t.shape,
        bShape: b.shape,
      });
    }
  } else {
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(configPath, 'utf8'));
    } catch (err) {
      fail(ErrorCodes.CONFIG, `${configPath}: not valid JSON (${(err as Error).message})`);
    }
    lora = loraConfigFromPeft(json);
    for (const [path, m] of decodePeftAdapter(new Uint8Array(readFileSync(weightsPath)))) raw.set(path, m);
  }
  const modules = new Map<string, { A: Matrix; B: Matrix }>();
  for (const [path, m] of raw) {
    if (m.aShape[0] !== lora.r)
      fail(
        ErrorCodes.SHAPE,
        `adapter ${dir}: ${path}.lora_A has ${m.aShape[0]} rows but adapter_config.r is ${lora.r}`,
      );
    modules.set(path, {
      A: matrixFrom(m.A, m.aShape[0], m.aShape[1], `${dir}: ${path}.lora_A`),
      B: matrixFrom(m.B, m.bShape[0], m.bShape[1], `${dir}: ${path}.lora_B`),
    });
  }
  if (modules.size === 0) fail(ErrorCodes.MODEL, `adapter ${dir} has no LoRA tensors`);
  return { source: dir, r: lora.r, scale: loraScaling(lora), lora, modules };
}

/** Base weights as (d_out, d_in) float64 matrices (GPT-2 Conv1D storage transposed back), W's spectra cached. */
export function baseMatrices(config: ModelConfig, weights: Map<string, tf.Tensor>, what = 'base model'): BaseMatrices {
  const matrices = new Map<string, Matrix>();
  const spectra = new Map<string, number[]>();
  const weight = (modulePath: string): Matrix => {
    const cached = matrices.get(modulePath);
    if (cached) return cached;
    const [dOut, dIn] = linearShape(config, modulePath);
    const { weight: key, transposed } = linearStorage(config, modulePath);
    const t = weights.get(key) ?? fail(ErrorCodes.MODEL, `${what} has no weight ${key} for ${modulePath}`);
    const data = t.dataSync() as Float32Array;
    const m = transposed
      ? matrixFrom(data, dIn, dOut, `${what}: ${key}`).transpose()
      : matrixFrom(data, dOut, dIn, `${what}: ${key}`);
    matrices.set(modulePath, m);
    return m;
  };
  return {
    weight,
    weightValues(modulePath) {
      let values = spectra.get(modulePath);
      if (!values) spectra.set(modulePath, (values = denseSvd(weight(modulePath), false).values));
      return values;
    },
  };
}

export function writeJson(dir: string, name: string, value: unknown): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, name);
  // 6 significant digits keep the files readable; the analysis is not more precise than that.
  writeAtomic(
    path,
    JSON.stringify(value, (_, v) => (typeof v === 'number' && !Number.isInteger(v) ? Number(v.toPrecision(6)) : v), 2) +
      '\n',
  );
  return path;
}

let pngSkipNoted = false;

/**
 * name.svg and name.png (2× scale, white background) in dir; returns the paths written. Without
 * @resvg/resvg-js (the offline bundle leaves it out) only the SVG is written, and that is said once.
 */
export function writeFigure(dir: string, name: string, svg: string): string[] {
  mkdirSync(dir, { recursive: true });
  const svgPath = join(dir, `${name}.svg`);
  const pngPath = join(dir, `${name}.png`);
  writeAtomic(svgPath, svg);
  const resvg = optionalPackage<typeof import('@resvg/resvg-js')>('@resvg/resvg-js');
  if (!resvg) {
    if (!pngSkipNoted) console.error('note: @resvg/resvg-js is not installed here: figures are written as SVG only');
    pngSkipNoted = true;
    return [svgPath];
  }
  const png = new resvg.Resvg(svg, {
    fitTo: { mode: 'zoom', value: 2 },
    background: 'white',
    font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' },
  })
    .render()
    .asPng();
  writeAtomic(pngPath, png);
  return [svgPath, pngPath];
}
