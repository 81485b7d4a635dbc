/**
 * Digests of served weights: an ONNX model folder's initializers (the graph's constants and rotary tables left out)
 * hashed as stored, keyed with vLLM's single-rank prefix; a folder with neither a graph nor a checkpoint refused with
 * a reason; and vLLM's compare over reports with and without rank prefixes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { readInitializers } from "../../src/model/builder/onnx-read.ts";
import {
  compareDigests,
  DigestsUnavailableError,
  RANK_PREFIX,
  WeightDigests,
} from "../../src/model/weight-checksums.ts";
import { tinyModelDir } from "../support/served.ts";

const SLOW = { timeout: 120_000 };

test("an ONNX model folder: one digest per weight initializer, over its stored bytes", SLOW, async () => {
  const dir = await tinyModelDir();
  const digests = await new WeightDigests(dir, "fp32").digests();
  const initializers = readInitializers(path.join(dir, "onnx/model.onnx"));
  const weights = [...initializers.keys()].filter((name) => !name.startsWith("const_") && !name.includes("inv_freq"));
  assert.deepEqual(Object.keys(digests).sort(), weights.map((name) => RANK_PREFIX + name).sort());
  for (const name of weights) {
    const expected = createHash("sha256").update(initializers.get(name)!.data).digest("hex");
    assert.equal(digests[RANK_PREFIX + name], expected, name);
  }
});

test("a folder with neither the served dtype's graph nor a checkpoint: refused with the reason", async () => {
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-no-weights-"));
  try {
    const digests = new WeightDigests(empty, "fp32");
    await assert.rejects(digests.digests(), (err: Error) => {
      assert.ok(err instanceof DigestsUnavailableError);
      assert.match(err.message, /neither onnx\/model\.onnx nor a safetensors checkpoint/);
      return true;
    });
  } finally {
    fs.rmSync(empty, { recursive: true, force: true });
  }
});

test("compare: bare names and older prefixes are this rank's; other ranks, missing keys and other digests differ", () => {
  const served = { [`${RANK_PREFIX}a`]: "aa", [`${RANK_PREFIX}b`]: "bb" };
  assert.deepEqual(compareDigests([{ a: "AA", b: "bb" }, served]), {
    match: true,
    mismatches: [],
    ranks: [RANK_PREFIX],
  });
  assert.deepEqual(compareDigests([{ "dp0:pp0:pcp0:tp0:a": "aa", b: "bb" }, served]).match, true);
  assert.deepEqual(compareDigests([{ a: "aa", b: "bc" }, served]).mismatches, [`${RANK_PREFIX}b`]);
  assert.deepEqual(compareDigests([{ a: "aa" }, served]).mismatches, [`${RANK_PREFIX}b`]);
  const otherRank = compareDigests([{ ...served, "dp0:pp0:pcp0:tp1:ep0:a": "aa" }, served]);
  assert.deepEqual(otherRank, {
    match: false,
    mismatches: ["dp0:pp0:pcp0:tp1:ep0:a"],
    ranks: [RANK_PREFIX, "dp0:pp0:pcp0:tp1:ep0:"],
  });
  // Several reports: every one is held to every other.
  assert.equal(compareDigests([served, served, { ...served, [`${RANK_PREFIX}a`]: "ab" }]).match, false);
});
