/**
 * The engine runner on onnxruntime-web's WASM build, which copies every input into its heap: rows that hold few of
 * their slots are fed a copy cut to the slots they hold (feedSlots), and must give the native CPU runner's answers.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { ModelRunner, RowInput } from "../../src/engine/model-runner.ts";
import { buildModel } from "../../src/model/builder/build.ts";
import { EngineKv } from "../../src/model/runners/engine-kv.ts";
import { type EngineRunner, feedSlots, openEngineRunner } from "../../src/model/runners/engine-runner.ts";
import { backendFor } from "../../src/model/ort/backends.ts";
import { tokens } from "../support/runner-checks.ts";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-engine-runner-wasm-"));
const tiny = path.join(root, "tiny");
// Sessions take seconds on a small machine; Bun's default limit is 5 s a test.
const SLOW = { timeout: 120_000 };

const row = (r: number, start: number): RowInput => ({ row: r, tokens: [1], start });

/** Natural-log probabilities of `logits`, in float64. */
function logProbs(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  let sum = 0;
  for (const x of logits) sum += Math.exp(x - max);
  const log = Math.log(sum) + max;
  return Float64Array.from(logits, (x) => x - log);
}

function assertSameLogProbs(actual: Float32Array, expected: Float32Array, what: string): void {
  const [a, b] = [logProbs(actual), logProbs(expected)];
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i] - b[i]));
  assert.ok(diff < 1e-5, `${what}: log-probabilities differ by ${diff}`);
}

describe("engine runner on the WASM build", () => {
  before(async () => {
    await buildModel({ preset: "tiny", out: tiny, seed: 0 });
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  test("a cut cache holds the most tokens any row holds, in steps of 16, within the capacity", () => {
    assert.equal(feedSlots([row(0, 5), row(1, 20)], 64), 32);
    assert.equal(feedSlots([row(0, 0)], 64), 16);
    assert.equal(feedSlots([row(0, 16)], 64), 16);
    assert.equal(feedSlots([row(0, 63)], 64), 64);
    assert.equal(feedSlots([row(0, 40)], 40), 40);
    assert.equal(feedSlots([row(3, 200), row(1, 7)], 256), 208);
  });

  test("rows copied cut to fewer slots are the first slots of each row, in the graph's layouts", () => {
    const shape = { numLayers: 2, numKvHeads: 2, headDim: 3 };
    const kv = new EngineKv(shape, 4);
    kv.resize(8);
    const canonical = Float32Array.from({ length: 8 * kv.floatsPerToken }, (_, i) => i + 1);
    for (let r = 0; r < 4; r++) kv.write(r, 0, 8, canonical.map((x) => x * (r + 1)));
    const [slots, rows] = [5, [2, 0]];
    for (let l = 0; l < shape.numLayers; l++) {
      const size = rows.length * 2 * 3 * slots;
      const [key, value] = [new Float32Array(size), new Float32Array(size)];
      kv.copyRows(l, rows, slots, key, value);
      const whole = kv.rowRange(l, 0, 4);
      rows.forEach((from, b) => {
        for (let h = 0; h < 2; h++) {
          for (let s = 0; s < slots; s++) {
            for (let i = 0; i < 3; i++) {
              // K [rows, kvHeads, headDim, slots], V [rows, kvHeads, slots, headDim]; the rows hold 8 slots each.
              assert.equal(key[((b * 2 + h) * 3 + i) * slots + s], whole.key[((from * 2 + h) * 3 + i) * 8 + s]);
              assert.equal(value[((b * 2 + h) * slots + s) * 3 + i], whole.value[((from * 2 + h) * 8 + s) * 3 + i]);
            }
          }
        }
      });
    }
    assert.throws(() => kv.copyRows(0, [0], 9, new Float32Array(54), new Float32Array(54)), /9 slots/);
  });

  test("cut, gathered and whole caches give the native CPU runner's log-probabilities within 1e-5", SLOW, async () => {
    const open = async (device: "cpu" | "wasm") =>
      await openEngineRunner({ dir: tiny, backend: await backendFor(device), maxRows: 4, maxLength: 256 }) as EngineRunner;
    const runners: ModelRunner[] = [];
    try {
      const [wasm, cpu] = [await open("wasm"), await open("cpu")];
      runners.push(wasm, cpu);
      const prompts = [tokens(5, 21), tokens(20, 22), tokens(9, 23)];
      const steps: RowInput[][] = [];
      // Each prompt prefilled alone in chunks of 4 (one row, cut), then three steps of all rows (cut to 32 of 64
      // slots), then rows out of order (gathered), then row 1 grown past 2/3 of the slots (fed whole).
      for (const [r, prompt] of prompts.entries()) {
        for (let s = 0; s < prompt.length; s += 4) steps.push([{ row: r, tokens: prompt.slice(s, s + 4), start: s }]);
      }
      const lengths = prompts.map((p) => p.length);
      const next = (rows: number[], n = 1) =>
        rows.map((r) => {
          const input = { row: r, tokens: tokens(n, 30 + r + lengths[r]), start: lengths[r] };
          lengths[r] += n;
          return input;
        });
      for (let i = 0; i < 3; i++) steps.push(next([0, 1, 2]));
      steps.push(next([2, 0]));
      steps.push(next([1], 26));
      steps.push(next([0, 1, 2]));
      for (const [i, inputs] of steps.entries()) {
        const [a, b] = [await wasm.step(inputs), await cpu.step(inputs)];
        inputs.forEach((input, j) => assertSameLogProbs(a[j], b[j], `step ${i} row ${input.row}`));
      }
      assert.equal(wasm.capacity, 64);
      assert.ok(feedSlots(steps.at(-1)!, 64) >= 64 * 2 / 3, "the last step feeds the whole cache");
      assert.ok(feedSlots(steps[steps.length - 5], 64) < 64 * 2 / 3, "the steps of all rows feed a cut cache");
    } finally {
      for (const runner of runners) await runner.dispose();
    }
  });
});
