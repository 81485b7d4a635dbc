/**
 * A model whose weights the engine graph cannot take is served through its own standard graph (the
 * StandardRunner), with the same tokens and log-probabilities as the engine graph gives the same weights.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { SamplingParams } from "../../src/engine/sampling-params.ts";
import type { ServedModel } from "../../src/server.ts";
import { writeForeignModel } from "../support/foreign-model.ts";
import { generated, openServedTiny } from "../support/served.ts";

const SLOW = { timeout: 180_000 };
const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-standard-layout-"));


const greedy = SamplingParams.parse({ temperature: 0, max_tokens: 10, ignore_eos: true });
const prompts = [[9707, 11, 1879, 0, 42], [151644, 872, 198, 3555, 374, 220, 17, 10, 17, 30, 151645, 198], [1000, 2000]];

describe("a model in another exporter's names", () => {
  let builtin: ServedModel;
  let foreign: ServedModel;

  before(async () => {
    const dir = path.join(root, "foreign");
    await writeForeignModel(dir, "tiny", 0);
    builtin = await openServedTiny();
    foreign = await openServedTiny({ model: dir });
  }, SLOW);
  after(async () => {
    await builtin?.engine.runner.dispose();
    await foreign?.engine.runner.dispose();
    fs.rmSync(root, { recursive: true, force: true });
  });

  test("is served through its standard graph", () => {
    assert.equal(builtin.layout, "engine");
    assert.equal(foreign.layout, "standard");
  });

  test("gives the engine graph's tokens and logprobs, alone and batched", SLOW, async () => {
    const expected = await Promise.all(prompts.map((p) => generated(builtin.engine.submit(p, greedy))));
    const together = await Promise.all(prompts.map((p) => generated(foreign.engine.submit(p, greedy))));
    const alone = [];
    for (const p of prompts) alone.push(await generated(foreign.engine.submit(p, greedy)));
    for (const [what, results] of [["batched", together], ["alone", alone]] as const) {
      results.forEach((r, i) => {
        assert.deepEqual(r.ids, expected[i].ids, `${what} prompt ${i}`);
        r.logprobs.forEach((lp, j) => assert.ok(Math.abs(lp - expected[i].logprobs[j]) < 1e-4, `${what} ${i}:${j}`));
      });
    }
    assert.equal(foreign.engine.cache.totalRefs, 0);
  });
});
