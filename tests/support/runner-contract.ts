/**
 * What every ModelRunner must do, as test bodies both runner test files run against their own runner: rows of
 * different lengths in one step, KV moved through the canonical layout, and all-position logits.
 */
import assert from "node:assert/strict";
import type { ModelRunner } from "../../src/engine/model-runner.ts";
import type { DecoderArch } from "../../src/model/builder/arch.ts";
import { assertClose, maxDiff, prefill, tokens } from "./runner-checks.ts";
import type { standardRun } from "./standard-graph.ts";

/** How a test file gets its runner and its reference. */
export interface RunnerUnderTest {
  open(): Promise<ModelRunner>;
  /** Every position's logits and present K/V of a whole sequence, through the standard graph. */
  reference(ids: number[]): ReturnType<typeof standardRun>;
  arch: Pick<DecoderArch, "numKvHeads" | "headDim" | "vocabSize">;
}

/** Chunks of different lengths in rows out of order, in one step, then decoded in any row order, match solo runs. */
export function mixedChunks({ open, reference }: RunnerUnderTest) {
  return async () => {
    const runner = await open();
    try {
      // Row 2 has its first 4 tokens cached already; the others start empty. One step feeds them all.
      const prompts = [tokens(5, 13), tokens(11, 14), tokens(13, 15)];
      const rows = [3, 0, 2];
      const next = [tokens(3, 16), tokens(3, 17), tokens(3, 18)];
      const expected = await Promise.all(prompts.map((p, i) => reference([...p, ...next[i]])));
      await prefill(runner, 2, prompts[2].slice(0, 4));
      const starts = [0, 0, 4];
      const logits = await runner.step(rows.map((row, i) => ({ row, tokens: prompts[i].slice(starts[i]), start: starts[i] })));
      logits.forEach((l, i) => assertClose(l, expected[i].at(prompts[i].length - 1), `prompt ${i} in row ${rows[i]}`));
      // The padding left nothing behind: each row decodes on from its own prompt, in any order of rows.
      for (let t = 0; t < 3; t++) {
        const order = t === 1 ? [2, 0, 1] : [0, 1, 2];
        const step = await runner.step(order.map((i) => ({ row: rows[i], tokens: [next[i][t]], start: prompts[i].length + t })));
        step.forEach((l, k) => {
          const i = order[k];
          assertClose(l, expected[i].at(prompts[i].length + t), `prompt ${i} decode ${t}`);
        });
      }
    } finally {
      await runner.dispose();
    }
  };
}

/**
 * readKv gives the canonical layout; writeKv and copyRow move a row's KV and the logits follow it. `shared`: the
 * blocks are views of one SharedArrayBuffer, as the prefix cache keeps them.
 */
export function canonicalKv({ open, reference, arch }: RunnerUnderTest, shared = false) {
  return async () => {
    const runner = await open();
    try {
      const prompt = tokens(32, 11);
      const next = tokens(6, 12);
      const expected = await reference([...prompt, ...next]);
      await prefill(runner, 0, prompt, 7);
      const block = 16;
      const floats = block * runner.floatsPerToken;
      const slab = shared ? new Float32Array(new SharedArrayBuffer(3 * floats * 4)) : null;
      const blocks = [0, 1].map((i) => {
        const out = slab ? slab.subarray((i + 1) * floats, (i + 2) * floats) : new Float32Array(floats);
        runner.readKv(0, i * block, block, out);
        return out;
      });
      // A runner whose cache lives on another device fills `out` by the time flush resolves.
      await runner.flush?.();
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
      await runner.flush?.();
      assert.equal(maxDiff(again, blocks[1]), 0);
    } finally {
      await runner.dispose();
    }
  };
}

/** Steps that name a row twice, a row outside the runner (of 4 rows), no tokens or no rows are refused. */
export async function refusesBadSteps(runner: ModelRunner): Promise<void> {
  await assert.rejects(runner.step([{ row: 0, tokens: [1], start: 0 }, { row: 0, tokens: [2], start: 1 }]), /twice/);
  await assert.rejects(runner.step([{ row: 1, tokens: [], start: 0 }]), /no tokens/);
  await assert.rejects(runner.step([{ row: 4, tokens: [1], start: 0 }]), /outside/);
  await assert.rejects(runner.step([]), /no rows/);
}

/** A row that asks for all logits gets every fed position's, beside a row that wants only its last. */
export function allLogits({ open, reference, arch }: RunnerUnderTest) {
  return async () => {
    const runner = await open();
    const vocab = arch.vocabSize;
    try {
      const [a, b] = [tokens(13, 19), tokens(6, 20)];
      const [expectedA, expectedB] = await Promise.all([reference(a), reference(b)]);
      await prefill(runner, 1, a.slice(0, 5));
      const [all, last] = await runner.step([
        { row: 1, tokens: a.slice(5), start: 5, allLogits: true },
        { row: 0, tokens: b, start: 0 },
      ]);
      assert.equal(all.length, 8 * vocab);
      for (let p = 5; p < 13; p++) assertClose(all.subarray((p - 5) * vocab, (p - 4) * vocab), expectedA.at(p), `position ${p}`);
      assert.equal(last.length, vocab);
      assertClose(last, expectedB.at(5), "the other row's last position");
    } finally {
      await runner.dispose();
    }
  };
}
