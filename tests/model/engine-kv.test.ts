import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { EngineKv } from "../../src/model/runners/engine-kv.ts";

// Head dims 5 and 8 and lengths 1, 6 and 7: the transposes' four-at-a-time loops and their remainders.
const shapes = [
  { numLayers: 2, numKvHeads: 2, headDim: 8 },
  { numLayers: 3, numKvHeads: 1, headDim: 5 },
];

/** Canonical layout [l][K, V][h][token][d], element by element: what readKv promises and writeKv takes. */
function canonicalIndex(shape: typeof shapes[0], length: number, l: number, kv: 0 | 1, h: number, t: number, i: number) {
  const { numKvHeads: kvh, headDim: d } = shape;
  return ((((l * 2 + kv) * kvh + h) * length + t) * d) + i;
}

describe("EngineKv", () => {
  for (const shape of shapes) {
    for (const [start, length] of [[0, 1], [3, 6], [9, 7]]) {
      test(`d=${shape.headDim}: write puts tokens [${start}, ${start + length}) in the graph's layout, read gives them back`, () => {
        const kv = new EngineKv(shape, 3);
        kv.resize(24, 3);
        const data = Float32Array.from({ length: length * kv.floatsPerToken }, (_, i) => i + 1);
        kv.write(1, start, length, data);
        const { numLayers, numKvHeads: kvh, headDim: d } = shape;
        for (let l = 0; l < numLayers; l++) {
          // Row 1 alone: K as [kvh, d, capacity] (transposed), V as [kvh, capacity, d].
          const { key, value } = kv.rowRange(l, 1, 1);
          for (let h = 0; h < kvh; h++) {
            for (let t = 0; t < length; t++) {
              for (let i = 0; i < d; i++) {
                const slot = start + t;
                assert.equal(key[(h * d + i) * 24 + slot], data[canonicalIndex(shape, length, l, 0, h, t, i)]);
                assert.equal(value[(h * 24 + slot) * d + i], data[canonicalIndex(shape, length, l, 1, h, t, i)]);
              }
            }
          }
          // Rows 0 and 2, and row 1's other slots, untouched.
          const others = [kv.rowRange(l, 0, 1), kv.rowRange(l, 2, 1)].flatMap((r) => [...r.key, ...r.value]);
          assert.ok(others.every((x) => x === 0), "other rows untouched");
          const held = new Set<number>();
          for (let h = 0; h < kvh; h++) {
            for (let i = 0; i < d; i++) for (let t = 0; t < length; t++) held.add((h * d + i) * 24 + start + t);
          }
          assert.ok(key.every((x, j) => held.has(j) || x === 0), "row 1's other K slots untouched");
        }
        const out = new Float32Array(data.length);
        kv.read(1, start, length, out);
        assert.deepEqual(out, data);
      });
    }
  }
});
