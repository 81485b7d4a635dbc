import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  checkKvCopies,
  copyKvRanges,
  forkPrefix,
  GpuKvCopier,
  type KvRangeCopy,
  type KvRowsLayout,
} from "../../kernels/gpu-kv-copy.ts";
import { EngineKv } from "../../src/model/runners/engine-kv.ts";
import { readBack, testDevice, upload } from "../support/gpu-device.ts";

const { device, noGpu, release } = await testDevice();
after(release);

/** The engine graph's layout: K with slots last, V with head dims last. */
const engineLayout = (rows: number, capacity: number): KvRowsLayout => ({
  rows,
  numKvHeads: 3,
  headDim: 8,
  capacity,
  key: "dim-slot",
  value: "slot-dim",
});

function layerSize(layout: KvRowsLayout): number {
  return layout.rows * layout.numKvHeads * layout.headDim * layout.capacity;
}

/** Distinct, reproducible words: every float a different bit pattern (NaNs included, which must survive). */
function filled(size: number, seed: number): Uint32Array {
  let x = seed >>> 0;
  return Uint32Array.from({ length: size }, () => (x = (Math.imul(x, 1664525) + 1013904223) >>> 0));
}

const readWords = async (buffer: GPUBuffer) => new Uint32Array(await readBack(device!, buffer));

/** Runs the copies on the GPU over `layers` layers and on the CPU twin, and asserts every word agrees. */
async function agree(layout: KvRowsLayout, layers: number, copies: KvRangeCopy[]): Promise<void> {
  const copier = await GpuKvCopier.create(device!);
  const cpu = Array.from({ length: layers }, (_, l) => ({ key: filled(layerSize(layout), 2 * l + 1), value: filled(layerSize(layout), 2 * l + 2) }));
  const buffers = cpu.map(({ key, value }) => ({ key: upload(device!, key), value: upload(device!, value) }));
  await copier.copy(layout, buffers, copies);
  for (const [l, { key, value }] of cpu.entries()) {
    const before = key.slice();
    copyKvRanges(layout, key, value, copies);
    if (copies.some((c) => c.length > 0)) assert.notDeepEqual(key, before, "the copies change something");
    assert.deepEqual(await readWords(buffers[l].key), key, `layer ${l} K`);
    assert.deepEqual(await readWords(buffers[l].value), value, `layer ${l} V`);
  }
  for (const { key, value } of buffers) [key, value].forEach((b) => b.destroy());
  copier.destroy();
}

describe("KV copy, CPU twin", () => {
  test("forking a prefix equals the engine's own row copy", () => {
    const layout = engineLayout(6, 64);
    const kv = new EngineKv({ numLayers: 2, numKvHeads: layout.numKvHeads, headDim: layout.headDim }, layout.rows);
    kv.resize(layout.capacity);
    const twins = [0, 1].map((l) => {
      const { key, value } = kv.rowRange(l, 0, layout.rows);
      key.set(new Float32Array(filled(key.length, 10 + l).map((w) => w & 0x3fffffff).buffer));
      value.set(new Float32Array(filled(value.length, 20 + l).map((w) => w & 0x3fffffff).buffer));
      return { key: key.slice(), value: value.slice() };
    });
    for (const to of [2, 4, 5]) kv.copyRow(1, to, 37);
    twins.forEach((twin, l) => {
      copyKvRanges(layout, twin.key, twin.value, forkPrefix(1, [2, 4, 5], 37));
      const { key, value } = kv.rowRange(l, 0, layout.rows);
      assert.deepEqual(twin.key, key);
      assert.deepEqual(twin.value, value);
    });
  });

  test("moves a token range to another place of another row, both axis orders", () => {
    for (const order of ["slot-dim", "dim-slot"] as const) {
      const layout: KvRowsLayout = { rows: 2, numKvHeads: 1, headDim: 2, capacity: 4, key: order, value: order };
      const data = Uint32Array.from({ length: 16 }, (_, i) => i);
      copyKvRanges(layout, data, data.slice(), [{ fromRow: 0, fromStart: 1, toRow: 1, toStart: 2, length: 2 }]);
      // Token t, dim i of row r sits at r*8 + t*2 + i (slot-dim) or r*8 + i*4 + t (dim-slot).
      const at = (r: number, t: number, i: number) => (order === "slot-dim" ? r * 8 + t * 2 + i : r * 8 + i * 4 + t);
      for (const [t, i] of [[0, 0], [0, 1], [1, 0], [1, 1]]) assert.equal(data[at(1, 2 + t, i)], at(0, 1 + t, i), `${order} token ${t} dim ${i}`);
      assert.equal(data[at(1, 0, 0)], at(1, 0, 0), `${order}: slots outside the range stay`);
    }
  });

  test("copies that overlap what another copy reads or writes, or leave the rows, are refused", () => {
    const layout = engineLayout(4, 16);
    const refused: KvRangeCopy[][] = [
      [{ fromRow: 0, fromStart: 0, toRow: 0, toStart: 4, length: 8 }],
      [{ fromRow: 0, fromStart: 0, toRow: 1, toStart: 0, length: 4 }, { fromRow: 1, fromStart: 2, toRow: 2, toStart: 0, length: 4 }],
      [{ fromRow: 0, fromStart: 0, toRow: 1, toStart: 0, length: 4 }, { fromRow: 2, fromStart: 0, toRow: 1, toStart: 3, length: 4 }],
      [{ fromRow: 0, fromStart: 10, toRow: 1, toStart: 0, length: 7 }],
      [{ fromRow: 0, fromStart: 0, toRow: 4, toStart: 0, length: 1 }],
      [{ fromRow: 0, fromStart: 0, toRow: 1, toStart: 0.5, length: 1 }],
    ];
    for (const copies of refused) assert.throws(() => checkKvCopies(layout, copies), RangeError, JSON.stringify(copies));
    checkKvCopies(layout, [...forkPrefix(0, [1, 2, 3], 16), { fromRow: 1, fromStart: 0, toRow: 1, toStart: 0, length: 0 }]);
    checkKvCopies(layout, [{ fromRow: 0, fromStart: 0, toRow: 0, toStart: 8, length: 8 }]);
  });
});

describe("KV copy, GPU against the CPU twin", () => {
  test("a prefix forked to the rows of n samples, on every layer, word for word", { skip: noGpu }, async () => {
    await agree(engineLayout(8, 128), 3, forkPrefix(2, [0, 3, 4, 5, 7], 77));
  });

  test("ranges moved between rows at other offsets, in both axis orders", { skip: noGpu }, async () => {
    const copies: KvRangeCopy[] = [
      { fromRow: 0, fromStart: 5, toRow: 1, toStart: 40, length: 20 },
      { fromRow: 2, fromStart: 0, toRow: 2, toStart: 64, length: 64 },
      { fromRow: 3, fromStart: 100, toRow: 0, toStart: 100, length: 28 },
      { fromRow: 1, fromStart: 0, toRow: 3, toStart: 0, length: 0 },
    ];
    await agree({ ...engineLayout(4, 128), key: "slot-dim", value: "dim-slot" }, 1, copies);
    await agree({ rows: 4, numKvHeads: 2, headDim: 64, capacity: 128, key: "dim-slot", value: "dim-slot" }, 2, copies);
  });
});
