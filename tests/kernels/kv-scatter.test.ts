/**
 * kv-scatter.wgsl against its CPU twin, EngineKv: a run's new tokens stored into rows (rows of different lengths
 * in one batch, padded to the longest), and canonical blocks written into and read out of rows, word for word.
 * Runs where navigator.gpu has an adapter (Deno; lavapipe in CI); elsewhere the tests are skipped.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { GpuKvScatter, type KvBlockMove, type KvScatterLayer } from "../../kernels/gpu-kv-scatter.ts";
import { EngineKv } from "../../src/model/runners/engine-kv.ts";
import { readBack, testDevice, upload as uploadTo } from "../support/gpu-device.ts";

const { device, noGpu, release } = await testDevice();
after(release);

const shape = { numLayers: 3, numKvHeads: 3, headDim: 8 };
const [ROWS, CAPACITY] = [5, 64];
const rowsShape = { rows: ROWS, numKvHeads: shape.numKvHeads, headDim: shape.headDim, capacity: CAPACITY };

/** Reproducible floats, distinct enough that a misplaced word shows. */
function filled(size: number, seed: number): Float32Array {
  let x = seed >>> 0;
  return Float32Array.from({ length: size }, () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5);
}

const upload = (data: Float32Array) => uploadTo(device!, data);
const readFloats = async (buffer: GPUBuffer, floats: number) => new Float32Array(await readBack(device!, buffer, floats * 4));

/** An EngineKv with every row filled, and GPU copies of its layers. */
function twins() {
  const kv = new EngineKv(shape, ROWS);
  kv.resize(CAPACITY);
  const gpuRows = Array.from({ length: shape.numLayers }, (_, l) => {
    const { key, value } = kv.rowRange(l, 0, ROWS);
    key.set(filled(key.length, 10 + l));
    value.set(filled(value.length, 20 + l));
    return { key: upload(key), value: upload(value) };
  });
  return { kv, gpuRows };
}

async function assertRowsAgree(kv: EngineKv, gpuRows: { key: GPUBuffer; value: GPUBuffer }[]): Promise<void> {
  for (let l = 0; l < shape.numLayers; l++) {
    const { key, value } = kv.rowRange(l, 0, ROWS);
    assert.deepEqual(await readFloats(gpuRows[l].key, key.length), key, `layer ${l} K`);
    assert.deepEqual(await readFloats(gpuRows[l].value, value.length), value, `layer ${l} V`);
  }
}

describe("KV scatter, GPU against the CPU twin (EngineKv)", () => {
  test("a batch's new tokens, padded to the longest row, go into their rows at their starts", { skip: noGpu }, async () => {
    const scatter = await GpuKvScatter.create(device!);
    const { kv, gpuRows } = twins();
    const [rows, starts, lengths, seq] = [[3, 0, 4], [10, 0, 57], [5, 2, 7], 7];
    const block = shape.numKvHeads * seq * shape.headDim;
    const outputs = gpuRows.map((_, l) => ({ key: filled(rows.length * block, 30 + l), value: filled(rows.length * block, 40 + l) }));
    for (let l = 0; l < shape.numLayers; l++) kv.storeNew(l, rows, starts, lengths, seq, outputs[l].key, outputs[l].value);
    const moves: KvBlockMove[] = rows.map((row, b) => ({
      row,
      start: starts[b],
      length: lengths[b],
      stride: seq,
      keyOffset: b * block,
      valueOffset: b * block,
    }));
    const layers: KvScatterLayer[] = gpuRows.map((r, l) => ({ ...r, packedKey: upload(outputs[l].key), packedValue: upload(outputs[l].value) }));
    const encoder = device!.createCommandEncoder();
    scatter.encode(encoder, rowsShape, "into-rows", moves, layers);
    device!.queue.submit([encoder.finish()]);
    await assertRowsAgree(kv, gpuRows);
    scatter.destroy();
  });

  test("canonical blocks are written into a row and read out of another as EngineKv writes and reads them", { skip: noGpu }, async () => {
    const scatter = await GpuKvScatter.create(device!);
    const { kv, gpuRows } = twins();
    const length = 16;
    const block = shape.numKvHeads * length * shape.headDim;
    const canonical = filled(shape.numLayers * 2 * block, 50);
    kv.write(2, 16, length, canonical);
    // The GPU side takes the canonical block split into all layers' K, then all layers' V.
    const split = (data: Float32Array, part: 0 | 1) =>
      Float32Array.from({ length: shape.numLayers * block }, (_, i) => data[(2 * Math.floor(i / block) + part) * block + (i % block)]);
    const [key, value] = [upload(split(canonical, 0)), upload(split(canonical, 1))];
    const move: KvBlockMove = { row: 2, start: 16, length, stride: length, keyOffset: 0, valueOffset: 0 };
    const packed = (k: GPUBuffer, v: GPUBuffer) => gpuRows.map((r) => ({ ...r, packedKey: k, packedValue: v }));
    let encoder = device!.createCommandEncoder();
    scatter.encode(encoder, rowsShape, "into-rows", [move], packed(key, value), block);
    device!.queue.submit([encoder.finish()]);
    await assertRowsAgree(kv, gpuRows);

    const expected = new Float32Array(shape.numLayers * 2 * block);
    kv.read(4, 40, length, expected);
    const [outKey, outValue] = [upload(new Float32Array(shape.numLayers * block)), upload(new Float32Array(shape.numLayers * block))];
    encoder = device!.createCommandEncoder();
    scatter.encode(encoder, rowsShape, "out-of-rows", [{ ...move, row: 4, start: 40 }], packed(outKey, outValue), block);
    device!.queue.submit([encoder.finish()]);
    assert.deepEqual(await readFloats(outKey, shape.numLayers * block), split(expected, 0));
    assert.deepEqual(await readFloats(outValue, shape.numLayers * block), split(expected, 1));
    scatter.destroy();
  });

  test("moves outside the rows or past their slots are refused", { skip: noGpu }, async () => {
    const scatter = await GpuKvScatter.create(device!);
    const encoder = device!.createCommandEncoder();
    const ok: KvBlockMove = { row: 0, start: 0, length: 4, stride: 4, keyOffset: 0, valueOffset: 0 };
    for (const bad of [{ row: ROWS }, { start: CAPACITY - 3 }, { stride: 3 }, { keyOffset: -1 }]) {
      assert.throws(() => scatter.encode(encoder, rowsShape, "into-rows", [{ ...ok, ...bad }], []), RangeError, JSON.stringify(bad));
    }
    scatter.destroy();
  });
});
