import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { buildModel } from "../../src/model/builder/build.ts";
import { PRESETS } from "../../src/model/builder/presets.ts";
import { StandardRunner } from "../../src/model/runners/standard-runner.ts";
import { backendFor } from "../../src/model/ort/backends.ts";
import { assertClose, tokens } from "../support/runner-checks.ts";
import { allLogits, canonicalKv, mixedChunks, refusesBadSteps, type RunnerUnderTest } from "../support/runner-contract.ts";
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

  const underTest = (padded: boolean): RunnerUnderTest => ({ open: () => open(4, padded), reference: standardRun, arch });
  test("chunks of different lengths in rows out of order, run together, padded, match their solo runs", SLOW, mixedChunks(underTest(true)));
  test(
    "chunks of different lengths in rows out of order, run in groups of equal lengths (no padding), match their solo runs",
    SLOW,
    mixedChunks(underTest(false)),
  );
  test("readKv gives the canonical layout, and writeKv or copyRow move a row's KV", SLOW, canonicalKv(underTest(true)));
  test("a row that asks for all logits gets every fed position's, beside a row that wants only its last", SLOW, allLogits(underTest(true)));

  test("bad steps and bad ranges are refused; a release during a step is not", SLOW, async () => {
    const runner = await open();
    try {
      await refusesBadSteps(runner);
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
