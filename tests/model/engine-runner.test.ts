import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  BUILD_RECORD,
  buildModel,
  ENGINE_FILES,
  ensureEngineGraph,
  isBuiltModel,
  readBuildRecord,
} from "../../src/model/builder/build.ts";
import { decodeModel } from "../../src/model/builder/onnx-read.ts";
import { PRESETS } from "../../src/model/builder/presets.ts";
import { EngineRunner, feedSlots, openEngineRunner } from "../../src/model/runners/engine-runner.ts";
import { engineRowCapacity } from "../../src/model/runners/engine-kv.ts";
import { backendFor } from "../../src/model/ort/backends.ts";
import { leftPad, loadReference, referenceForward } from "./reference.ts";
import { assertClose, prefill, tokens } from "../support/runner-checks.ts";
import { allLogits, canonicalKv, mixedChunks, refusesBadSteps, type RunnerUnderTest } from "../support/runner-contract.ts";
import { releaseStandardRuns, standardRun as standardRunOf } from "../support/standard-graph.ts";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-engine-runner-"));
const tiny = path.join(root, "tiny");
const arch = PRESETS.tiny.arch;
const VOCAB = arch.vocabSize;
const PAD = 151643;
// Sessions and reference runs take seconds on a small machine; Bun's default limit is 5 s a test.
const SLOW = { timeout: 120_000 };
const sha256 = (file: string) => createHash("sha256").update(fs.readFileSync(file)).digest("hex");


/** Every position's logits and present K/V of a whole sequence, through the standard graph. */
const standardRun = (ids: number[], dir = tiny) => standardRunOf(dir, ids);


const open = async (maxRows = 4, dir = tiny) =>
  openEngineRunner({ dir, backend: await backendFor("cpu"), maxRows, maxLength: 4096 });

describe("engine runner", () => {
  before(async () => {
    await buildModel({ preset: "tiny", out: tiny, seed: 0 });
  });
  after(async () => {
    await releaseStandardRuns();
    fs.rmSync(root, { recursive: true, force: true });
  });

  test("the engine graph has the engine's inputs and outputs and is listed in the build record", () => {
    const model = decodeModel(fs.readFileSync(path.join(tiny, ENGINE_FILES.fp32)));
    const io = (list: typeof model.graph.inputs) => list.map((v) => `${v.name}:${v.elemType}:[${v.dims}]`);
    assert.deepEqual(io(model.graph.inputs).slice(0, 6), [
      "input_ids:7:[batch_size,sequence_length]",
      "position_ids:7:[batch_size,sequence_length]",
      "past_lengths:7:[batch_size]",
      "logit_index:7:[batch_size,logit_positions]",
      "key_cache.0:1:[batch_size,2,16,cache_length]",
      "value_cache.0:1:[batch_size,2,cache_length,16]",
    ]);
    assert.deepEqual(io(model.graph.outputs).slice(0, 3), [
      "logits:1:[logit_rows,151936]",
      "key.0:1:[batch_size,2,sequence_length,16]",
      "value.0:1:[batch_size,2,sequence_length,16]",
    ]);
    assert.ok(readBuildRecord(tiny)!.files[ENGINE_FILES.fp32] > 0);
    assert.ok(isBuiltModel(tiny, { preset: "tiny", seed: 0 }));
  });

  test("a prompt prefilled in one go gives the reference's and the standard graph's last logits", SLOW, async () => {
    const runner = await open();
    try {
      const prompt = [9707, 11, 1879, 0, 42, 151644, 872, 198];
      const logits = await prefill(runner, 1, prompt);
      assertClose(logits, (await standardRun(prompt)).at(prompt.length - 1), "vs standard graph");
      const ref = referenceForward(loadReference(tiny), leftPad([prompt], PAD));
      assertClose(logits, ref.logits.subarray((prompt.length - 1) * VOCAB), "vs reference");
    } finally {
      await runner.dispose();
    }
  });

  test("a prompt prefilled in chunks of 5 then decoded 8 tokens matches every position", SLOW, async () => {
    const runner = await open();
    try {
      const prompt = tokens(13, 1);
      const next = tokens(8, 2);
      const expected = await standardRun([...prompt, ...next]);
      assertClose(await prefill(runner, 2, prompt, 5), expected.at(12), "after the last chunk");
      for (let i = 0; i < next.length; i++) {
        const [logits] = await runner.step([{ row: 2, tokens: [next[i]], start: prompt.length + i }]);
        assertClose(logits, expected.at(prompt.length + i), `decode step ${i}`);
      }
    } finally {
      await runner.dispose();
    }
  });

  test("released logits are freed where the runtime can free a buffer, and the steps after are unchanged", SLOW, async () => {
    const opened = await open();
    assert.ok(opened instanceof EngineRunner);
    const runner: EngineRunner = opened;
    try {
      const prompt = tokens(13, 3);
      const next = tokens(4, 4);
      const expected = await standardRun([...prompt, ...next]);
      const frees = typeof (ArrayBuffer.prototype as { transfer?: unknown }).transfer === "function";
      for (let i = 0; i <= next.length; i++) {
        const fed = i === 0 ? { tokens: prompt, start: 0 } : { tokens: [next[i - 1]], start: prompt.length + i - 1 };
        const [logits] = await runner.step([{ row: 1, ...fed }]);
        assertClose(logits, expected.at(prompt.length + i - 1), `step ${i}, before the release`);
        const kept = logits.slice();
        runner.releaseLogits();
        // Freed (ArrayBuffer.prototype.transfer: Deno, Bun, Node 21+), the array reads as empty; elsewhere it stays.
        if (frees) assert.equal(logits.length, 0, `step ${i}: the logits' memory is freed`);
        else assert.deepEqual(logits, kept, `step ${i}: nothing freed, nothing changed`);
        runner.releaseLogits();
      }
    } finally {
      await runner.dispose();
    }
  });

  test("rows of different lengths decoded together each match their solo run", SLOW, async () => {
    const runner = await open();
    try {
      const prompts = [tokens(3, 3), tokens(9, 4), tokens(14, 5)];
      const next = [tokens(4, 6), tokens(4, 7), tokens(4, 8)];
      const expected = await Promise.all(prompts.map((p, r) => standardRun([...p, ...next[r]])));
      for (const [row, prompt] of prompts.entries()) await prefill(runner, row, prompt);
      for (let i = 0; i < 4; i++) {
        const logits = await runner.step(
          prompts.map((p, row) => ({ row, tokens: [next[row][i]], start: p.length + i })),
        );
        logits.forEach((l, row) => assertClose(l, expected[row].at(prompts[row].length + i), `row ${row} step ${i}`));
      }
    } finally {
      await runner.dispose();
    }
  });

  test("rows holding under a third of their slots, fed a cut copy of their cache, match their solo runs", SLOW, async () => {
    const runner = await open();
    try {
      runner.reserve(600);
      const capacity = runner.capacity;
      const prompts = [tokens(3, 13), tokens(9, 14), tokens(14, 15)];
      const next = [tokens(4, 16), tokens(4, 17), tokens(4, 18)];
      const expected = await Promise.all(prompts.map((p, r) => standardRun([...p, ...next[r]])));
      for (const [row, prompt] of prompts.entries()) await prefill(runner, row, prompt);
      for (let i = 0; i < 4; i++) {
        const inputs = prompts.map((p, row) => ({ row, tokens: [next[row][i]], start: p.length + i }));
        assert.ok(feedSlots(inputs, capacity) < capacity / 3, `step ${i} is fed a cut cache`);
        const logits = await runner.step(inputs);
        logits.forEach((l, row) => assertClose(l, expected[row].at(prompts[row].length + i), `row ${row} step ${i}`));
      }
      assert.equal(runner.capacity, capacity);
    } finally {
      await runner.dispose();
    }
  });

  test("growing the cache across a bucket boundary and copying a row keep the logits", SLOW, async () => {
    const runner = await open();
    try {
      const prompt = tokens(60, 9);
      const next = tokens(6, 10);
      const expected = await standardRun([...prompt, ...next]);
      runner.reserve(prompt.length);
      assert.equal(runner.capacity, 64);
      await prefill(runner, 0, prompt, 16);
      runner.reserve(100);
      assert.equal(runner.capacity, engineRowCapacity(100, 4096));
      for (let i = 0; i < 3; i++) {
        const [logits] = await runner.step([{ row: 0, tokens: [next[i]], start: prompt.length + i }]);
        assertClose(logits, expected.at(prompt.length + i), `after growing, step ${i}`);
      }
      runner.copyRow(0, 3, prompt.length + 3);
      for (let i = 3; i < 6; i++) {
        const [logits] = await runner.step([{ row: 3, tokens: [next[i]], start: prompt.length + i }]);
        assertClose(logits, expected.at(prompt.length + i), `in the copied row, step ${i}`);
      }
    } finally {
      await runner.dispose();
    }
  });

  test("the row buffers follow the highest row in use, not the most rows, and rows keep their KV as they change", SLOW, async () => {
    const runner = await open(16);
    try {
      const perRow = (rows: number) => rows * runner.capacity * runner.floatsPerToken * 4;
      const prompt = tokens(20, 11);
      await prefill(runner, 0, prompt, 20);
      assert.equal(runner.workingBytes(), perRow(4), "one row in use holds 4 rows");
      const kv = () => {
        const out = new Float32Array(prompt.length * runner.floatsPerToken);
        runner.readKv(0, 0, prompt.length, out);
        return out;
      };
      const before = kv();
      await runner.step([{ row: 10, tokens: [5], start: 0 }]);
      assert.equal(runner.workingBytes(), perRow(12), "row 10 in use: 12 rows held");
      assert.deepEqual(kv(), before, "row 0 kept its KV as rows were added");
      runner.releaseRow(10);
      runner.reserve(1);
      assert.equal(runner.workingBytes(), perRow(12), "rows are not dropped at the first step that could");
      for (let i = 0; i < 63; i++) runner.reserve(1);
      assert.equal(runner.workingBytes(), perRow(4), "row 10 released 64 steps ago: back to 4 rows");
      assert.deepEqual(kv(), before, "row 0 kept its KV as rows were dropped");
      runner.releaseRow(0);
      runner.reserve(1);
      assert.equal(runner.workingBytes(), 0, "no row in use holds nothing");
      // Rows about to be used are laid out in the one call that names them: 9 rows need 12 (a spare, by 4s).
      runner.reserve(20, 9);
      assert.equal(runner.workingBytes(), perRow(12), "reserve(length, 9) holds 12 rows at once");
      assert.throws(() => runner.reserve(20, 17), /outside/);
    } finally {
      await runner.dispose();
    }
  });

  const underTest: RunnerUnderTest = { open: () => open(), reference: (ids) => standardRun(ids), arch };
  test("readKv gives the canonical layout, and writeKv or copyRow move a row's KV", SLOW, canonicalKv(underTest));
  test("chunks of different lengths in rows out of order, run together, match their solo runs", SLOW, mixedChunks(underTest));
  test("a row that asks for all logits gets every fed position's, beside a row that wants only its last", SLOW, allLogits(underTest));

  test("steps that name a row twice, a row outside the runner, or no tokens are refused", SLOW, async () => {
    const runner = await open();
    try {
      await refusesBadSteps(runner);
    } finally {
      await runner.dispose();
    }
  });

  test("row capacity: 64 slots at least, then four sizes per doubling, at most a fifth unused, never past the maximum", () => {
    assert.deepEqual([1, 64, 65, 80, 81, 128, 129, 200, 1024, 1025, 3000, 20000].map((n) => engineRowCapacity(n, 1 << 20)), [
      64,
      64,
      80,
      80,
      96,
      128,
      160,
      224,
      1024,
      1280,
      3072,
      20480,
    ]);
    const sizes = new Set<number>();
    for (let n = 65; n <= 9000; n++) {
      const slots = engineRowCapacity(n, 1 << 20);
      assert.ok(slots >= n && (slots - n) / slots < 0.2, `${n} tokens given ${slots} slots`);
      sizes.add(slots);
    }
    // 64 < n <= 8192 is seven doublings; above that, steps of 1024.
    assert.equal([...sizes].filter((s) => s <= 8192).length, 7 * 4);
    assert.equal(engineRowCapacity(100, 100), 100);
    assert.equal(engineRowCapacity(90, 100), 96);
    assert.throws(() => engineRowCapacity(101, 100), /maximum length/);
  });

  test("the wasm build gives the same logits (inputs copied into its heap)", SLOW, async () => {
    const runner = await openEngineRunner({
      dir: tiny,
      backend: await backendFor("wasm"),
      maxRows: 3,
      maxLength: 256,
    });
    try {
      const prompts = [tokens(7, 13), tokens(11, 14)];
      const next = tokens(3, 15);
      const expected = await Promise.all(prompts.map((p) => standardRun([...p, ...next])));
      for (const [row, prompt] of prompts.entries()) await prefill(runner, row, prompt, 4);
      for (let i = 0; i < next.length; i++) {
        const logits = await runner.step(prompts.map((p, row) => ({ row, tokens: [next[i]], start: p.length + i })));
        logits.forEach((l, row) =>
          assertClose(l, expected[row].at(prompts[row].length + i), `wasm row ${row} step ${i}`)
        );
      }
    } finally {
      await runner.dispose();
    }
  });

  test("with external data the engine graph points into the same data file, at the same offsets", SLOW, async () => {
    const dir = path.join(root, "tiny-external");
    const preset = { ...PRESETS.tiny, name: "tiny-external", externalData: true };
    await buildModel({ preset, out: dir });
    const onnxFiles = fs.readdirSync(path.join(dir, "onnx")).sort();
    assert.deepEqual(onnxFiles, ["engine.onnx", "model.onnx", "model.onnx_data"]);
    assert.ok(fs.statSync(path.join(dir, ENGINE_FILES.fp32)).size < 1e6);
    const refs = (file: string) =>
      new Map(
        decodeModel(fs.readFileSync(path.join(dir, file))).graph.initializers.filter((t) => t.external)
          .map((t) => [t.name, t.external]),
      );
    const [standard, engine] = [refs("onnx/model.onnx"), refs(ENGINE_FILES.fp32)];
    assert.ok(engine.size > 10);
    for (const [name, ref] of engine) assert.deepEqual(ref, standard.get(name), name);

    const runner = await open(2, dir);
    try {
      const prompt = tokens(9, 16);
      assertClose(await prefill(runner, 0, prompt, 4), (await standardRun(prompt, dir)).at(8), "external data");
    } finally {
      await runner.dispose();
    }
  });

  test("ensureEngineGraph rewrites a missing engine graph byte for byte and keeps the folder complete", async () => {
    const dir = path.join(root, "tiny-again");
    await buildModel({ preset: "tiny", out: dir, seed: 0 });
    const file = path.join(dir, ENGINE_FILES.fp32);
    assert.equal(sha256(file), sha256(path.join(tiny, ENGINE_FILES.fp32)), "the same seed gives the same bytes");
    // A folder built before engine graphs existed: no file, no record entry.
    fs.rmSync(file);
    const record = JSON.parse(fs.readFileSync(path.join(dir, BUILD_RECORD), "utf8"));
    delete record.files[ENGINE_FILES.fp32];
    fs.writeFileSync(path.join(dir, BUILD_RECORD), JSON.stringify(record));
    assert.equal(ensureEngineGraph(dir), file);
    assert.equal(sha256(file), sha256(path.join(tiny, ENGINE_FILES.fp32)));
    assert.equal(readBuildRecord(dir)!.files[ENGINE_FILES.fp32], fs.statSync(file).size);
    assert.ok(isBuiltModel(dir, { preset: "tiny", seed: 0 }));
    const before = fs.statSync(file).mtimeMs;
    ensureEngineGraph(dir);
    assert.equal(fs.statSync(file).mtimeMs, before, "a present engine graph is not rewritten");
    // One an older emitter wrote (here: another graph entirely, recorded with its size) is.
    fs.copyFileSync(path.join(dir, "onnx/model.onnx"), file);
    const stale = readBuildRecord(dir)!;
    stale.files[ENGINE_FILES.fp32] = fs.statSync(file).size;
    fs.writeFileSync(path.join(dir, BUILD_RECORD), JSON.stringify({ ...stale, dir: undefined }));
    ensureEngineGraph(dir);
    assert.equal(sha256(file), sha256(path.join(tiny, ENGINE_FILES.fp32)));
    assert.ok(isBuiltModel(dir, { preset: "tiny", seed: 0 }));
  });
});
