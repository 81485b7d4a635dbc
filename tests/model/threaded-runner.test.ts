/**
 * The engine's runner on the model thread (ThreadedRunner, what openModelRunner gives on onnxruntime-node): the same
 * contract as the runner it drives, errors of its kind, and a failed call reported rather than lost.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { backendFor } from "../../src/model/ort/backends.ts";
import { buildModel } from "../../src/model/builder/build.ts";
import { PRESETS } from "../../src/model/builder/presets.ts";
import { openModelRunner } from "../../src/model/runners/open-runner.ts";
import { ThreadedRunner } from "../../src/model/thread/threaded-runner.ts";
import { openWeights, WeightsError } from "../../src/model/weights.ts";
import { prefill, tokens } from "../support/runner-checks.ts";
import {
  allLogits,
  canonicalKv,
  mixedChunks,
  refusesBadSteps,
  type RunnerUnderTest,
} from "../support/runner-contract.ts";
import { releaseStandardRuns, standardRun } from "../support/standard-graph.ts";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-threaded-runner-"));
const tiny = path.join(root, "tiny");
const arch = PRESETS.tiny.arch;
// Sessions and reference runs take seconds on a small machine; Bun's default limit is 5 s a test.
const SLOW = { timeout: 120_000 };

const open = async (maxRows = 4) => {
  const { runner, layout } = await openModelRunner({
    dir: tiny,
    backend: await backendFor("cpu"),
    maxRows,
    maxLength: 4096,
  });
  assert.equal(layout, "engine");
  assert.ok(runner instanceof ThreadedRunner, "onnxruntime-node runners open on the model thread");
  return runner;
};

describe("threaded runner", () => {
  before(async () => {
    await buildModel({ preset: "tiny", out: tiny, seed: 0 });
  });
  after(async () => {
    await releaseStandardRuns();
    fs.rmSync(root, { recursive: true, force: true });
  });

  const underTest: RunnerUnderTest = { open: () => open(), reference: (ids) => standardRun(tiny, ids), arch };
  test(
    "readKv gives the canonical layout by flush, and writeKv or copyRow move a row's KV",
    SLOW,
    canonicalKv(underTest),
  );
  test(
    "blocks in shared memory (the prefix cache's) are read and written in place, with the same results",
    SLOW,
    canonicalKv(underTest, true),
  );
  test(
    "chunks of different lengths in rows out of order, run together, match their solo runs",
    SLOW,
    mixedChunks(underTest),
  );
  test(
    "a row that asks for all logits gets every fed position's, beside a row that wants only its last",
    SLOW,
    allLogits(underTest),
  );

  test("bad steps are refused, and calls that would change rows during a step throw at once", SLOW, async () => {
    const runner = await open();
    try {
      await refusesBadSteps(runner);
      assert.throws(() => runner.releaseRow(4), /outside/);
      const step = runner.step([{ row: 0, tokens: tokens(3, 1), start: 0 }]);
      assert.throws(() => runner.reserve(64), /while a step is running/);
      assert.throws(() => runner.copyRow(0, 1, 1), /while a step is running/);
      await step;
      runner.reserve(64);
    } finally {
      await runner.dispose();
    }
  });

  test(
    "a call that fails on the thread fails the next flush or step, once, instead of passing unnoticed",
    SLOW,
    async () => {
      const runner = await open();
      try {
        await prefill(runner, 0, tokens(5, 2));
        // Row 0 holds 5 tokens in 64 slots: reading or copying 100 of them is out of range on the thread.
        runner.readKv(0, 0, 100, new Float32Array(100 * runner.floatsPerToken));
        await assert.rejects(runner.flush!(), /outside/);
        await runner.flush!();
        runner.copyRow(0, 1, 100);
        await assert.rejects(runner.step([{ row: 0, tokens: [1], start: 5 }]), /outside/);
        // Reported once: the rows it may have left wrong are the engine's to recompute, and the runner goes on.
        const [logits] = await runner.step([{ row: 0, tokens: [1], start: 5 }]);
        assert.equal(logits.length, arch.vocabSize);
      } finally {
        await runner.dispose();
      }
    },
  );

  test("new weights open on the thread, and their refusals keep their kind", SLOW, async () => {
    const backend = await backendFor("cpu");
    const served = {
      dir: tiny,
      dtype: "fp32" as const,
      backend,
      maxRows: 2,
      maxLength: 4096,
      scratchDir: path.join(root, "refit"),
    };
    const runner = await openWeights(tiny, served);
    try {
      assert.ok(runner instanceof ThreadedRunner);
      const [logits] = await runner.step([{ row: 0, tokens: tokens(4, 3), start: 0 }]);
      assert.equal(logits.length, arch.vocabSize);
    } finally {
      await runner.dispose();
    }
    const other = path.join(root, "llama");
    await buildModel({ preset: "tiny-llama3", out: other, seed: 0 });
    const refused = await openWeights(other, served).then(() => null, (err) => err);
    assert.ok(refused instanceof WeightsError, String(refused));
    assert.equal(refused.problem, "mismatch");
    assert.match(refused.message, /another architecture/);
  });
});
