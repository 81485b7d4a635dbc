import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { buildModel } from "../../src/model/builder/build.ts";
import { PRESETS } from "../../src/model/builder/presets.ts";
import { StandardRunner } from "../../src/model/standard-runner.ts";
import { backendFor } from "../../src/model/backends.ts";
import { assertClose, maxDiff, prefill, tokens } from "../support/runner-checks.ts";
import { releaseStandardRuns, standardRun as standardRunOf } from "../support/standard-graph.ts";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-standard-runner-"));
const tiny = path.join(root, "tiny");
const arch = PRESETS.tiny.arch;
// Sessions and reference runs take seconds on a small machine; Bun's default limit is 5 s a test.
const SLOW = { timeout: 120_000 };

/** Every position's logits and present K/V of a whole sequence, through the standard graph. */
const standardRun = (ids: number[]) => standardRunOf(tiny, ids);

async function open(maxRows = 4, padded = true) {
  const backend = await backendFor("cpu");
  const session = await backend.openFile({ model: path.join(tiny, "onnx/model.onnx"), externalData: [] });
  return new StandardRunner({ session, Tensor: backend.Tensor, arch, maxRows, maxLength: 4096, padded });
}

describe("standard runner", () => {
  before(async () => {
    await buildModel({ preset: "tiny", out: tiny, seed: 0 });
  });
  after(async () => {
    await releaseStandardRuns();
    fs.rmSync(root, { recursive: true, force: true });
  });

  test("a prompt prefilled in chunks of 5 then decoded 8 tokens matches every position", SLOW, async () => {
    const runner = await open();
    try {
      assert.equal(runner.floatsPerToken, arch.numLayers * 2 * arch.numKvHeads * arch.headDim);
      const prompt = tokens(13, 1);
      const next = tokens(8, 2);
      const expected = await standardRun([...prompt, ...next]);
      for (let start = 0; start < prompt.length; start += 5) {
        const chunk = prompt.slice(start, start + 5);
        const [logits] = await runner.step([{ row: 2, tokens: chunk, start }]);
        assertClose(logits, expected.at(start + chunk.length - 1), `chunk at ${start}`);
      }
      for (let i = 0; i < next.length; i++) {
        const [logits] = await runner.step([{ row: 2, tokens: [next[i]], start: prompt.length + i }]);
        assertClose(logits, expected.at(prompt.length + i), `decode step ${i}`);
      }
      assert.ok(runner.workingBytes() >= (prompt.length + next.length) * runner.floatsPerToken * 4);
    } finally {
      await runner.dispose();
    }
  });

  for (const padded of [true, false]) {
    const how = padded ? "run together, padded" : "run in groups of equal lengths (no padding)";
    test(`chunks of different lengths in rows out of order, ${how}, match their solo runs`, SLOW, async () => {
      const runner = await open(4, padded);
      try {
        // Row 2 has its first 4 tokens cached already; the others start empty. One run pads them all.
        const prompts = [tokens(5, 13), tokens(11, 14), tokens(13, 15)];
        const rows = [3, 0, 2];
        const next = [tokens(3, 16), tokens(3, 17), tokens(3, 18)];
        const expected = await Promise.all(prompts.map((p, i) => standardRun([...p, ...next[i]])));
        await prefill(runner, 2, prompts[2].slice(0, 4));
        const starts = [0, 0, 4];
        const logits = await runner.step(
          rows.map((row, i) => ({ row, tokens: prompts[i].slice(starts[i]), start: starts[i] })),
        );
        logits.forEach((l, i) =>
          assertClose(l, expected[i].at(prompts[i].length - 1), `prompt ${i} in row ${rows[i]}`)
        );
        // The padding left nothing behind: each row decodes on from its own prompt, in any order of rows.
        for (let t = 0; t < 3; t++) {
          const order = t === 1 ? [2, 0, 1] : [0, 1, 2];
          const step = await runner.step(
            order.map((i) => ({ row: rows[i], tokens: [next[i][t]], start: prompts[i].length + t })),
          );
          step.forEach((l, k) => {
            const i = order[k];
            assertClose(l, expected[i].at(prompts[i].length + t), `prompt ${i} decode ${t}`);
          });
        }
      } finally {
        await runner.dispose();
      }
    });
  }

  test("readKv gives the canonical layout, and writeKv or copyRow move a row's KV", SLOW, async () => {
    const runner = await open();
    try {
      const prompt = tokens(32, 11);
      const next = tokens(6, 12);
      const expected = await standardRun([...prompt, ...next]);
      await prefill(runner, 0, prompt, 7);
      const block = 16;
      const blocks = [0, 1].map((i) => {
        const out = new Float32Array(block * runner.floatsPerToken);
        runner.readKv(0, i * block, block, out);
        return out;
      });
      // Canonical: [layer][K, V][kv head][token][head dim]; the standard graph's present is [1, kvH, T, D].
      const { numKvHeads: kvh, headDim: d } = arch;
      const total = prompt.length + next.length;
      for (const kind of ["key", "value"] as const) {
        const present = expected.present(1, kind);
        for (const [h, t, i] of [[0, 0, 0], [1, 5, 3], [1, 15, 15]]) {
          const canonical = blocks[0][((2 * 1 + (kind === "key" ? 0 : 1)) * kvh + h) * block * d + t * d + i];
          const diff = Math.abs(canonical - present[(h * total + t) * d + i]);
          assert.ok(diff < 1e-5, `${kind} layer 1 head ${h} token ${t}`);
        }
      }
      blocks.forEach((data, i) => runner.writeKv(2, i * block, block, data));
      for (let i = 0; i < 3; i++) {
        const [logits] = await runner.step([{ row: 2, tokens: [next[i]], start: prompt.length + i }]);
        assertClose(logits, expected.at(prompt.length + i), `decode from the written row, step ${i}`);
      }
      runner.copyRow(2, 1, prompt.length + 3);
      runner.releaseRow(2);
      for (let i = 3; i < next.length; i++) {
        const [logits] = await runner.step([{ row: 1, tokens: [next[i]], start: prompt.length + i }]);
        assertClose(logits, expected.at(prompt.length + i), `decode from the copied row, step ${i}`);
      }
      // What the copy reads back is what was written.
      const again = new Float32Array(block * runner.floatsPerToken);
      runner.readKv(1, block, block, again);
      assert.equal(maxDiff(again, blocks[1]), 0);
    } finally {
      await runner.dispose();
    }
  });

  test("bad steps and bad ranges are refused; a release during a step is not", SLOW, async () => {
    const runner = await open();
    try {
      await assert.rejects(
        runner.step([{ row: 0, tokens: [1], start: 0 }, { row: 0, tokens: [2], start: 1 }]),
        /twice/,
      );
      await assert.rejects(runner.step([{ row: 1, tokens: [], start: 0 }]), /no tokens/);
      await assert.rejects(runner.step([{ row: 4, tokens: [1], start: 0 }]), /outside/);
      await assert.rejects(runner.step([]), /no rows/);
      await assert.rejects(runner.step([{ row: 0, tokens: [1], start: 3 }]), /holds 0 tokens/);
      await runner.step([{ row: 0, tokens: tokens(4, 1), start: 0 }]);
      const out = new Float32Array(8 * runner.floatsPerToken);
      assert.throws(() => runner.readKv(0, 2, 4, out), /outside the 4 tokens/);
      assert.throws(() => runner.readKv(0, 0, 4, new Float32Array(1)), /floats/);
      assert.throws(() => runner.writeKv(1, 2, 1, out), /gap/);
      assert.throws(() => runner.copyRow(0, 1, 5), /outside/);
      assert.throws(() => runner.reserve(5000), /maximum length/);
      // A row released while its step runs (an aborted request) does not fail the step, and ends up empty.
      const pending = runner.step([{ row: 3, tokens: [5, 6], start: 0 }]);
      runner.releaseRow(3);
      assert.throws(() => runner.copyRow(0, 1, 1), /while a step is running/);
      await pending;
      await assert.rejects(runner.step([{ row: 3, tokens: [1], start: 2 }]), /holds 0 tokens/);
      runner.releaseRow(0);
      runner.reserve(1);
      assert.equal(runner.workingBytes(), 0);
    } finally {
      await runner.dispose();
    }
  });
});
