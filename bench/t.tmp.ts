import { aggregateInOrder, addInto } from '../shared/train/aggregate.ts';
const floats = 294912, N = 64;
const distinct = Array.from({ length: N }, (_, k) => { const g = new Float32Array(floats); for (let i = 0; i < floats; i++) g[i] = ((i + k) % 97) * 1e-4; return g; });
const results = distinct.map((g) => ({ lossSum: 1, tokenCount: 1, grads: new Map([['all', g]]) }));
for (let rep = 0; rep < 5; rep++) {
  const r0 = process.resourceUsage(); const t0 = performance.now();
  for (let k = 0; k < 4; k++) aggregateInOrder(results);
  const ms = performance.now() - t0; const r1 = process.resourceUsage();
  const acc = new Float32Array(floats); const t1 = performance.now();
  for (let k = 0; k < 4; k++) for (const g of distinct) addInto(acc, g);
  const ms2 = performance.now() - t1;
  console.log('aggregate', (4 * N * floats * 4 / 1e6 / ms).toFixed(2), 'GB/s; faults', r1.minorPageFault - r0.minorPageFault, '; addInto only', (4 * N * floats * 4 / 1e6 / ms2).toFixed(2));
}
