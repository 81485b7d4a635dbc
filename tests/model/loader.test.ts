import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { env as transformersEnv, Tensor as TransformersTensor } from "@huggingface/transformers";
import { buildModel } from "../../src/model/builder/build.ts";
import { BUILTIN_MODEL, defaultCacheDir, ensureBuiltinModel } from "../../src/model/builtin.ts";
import { ModelLoadError } from "../../src/model/errors.ts";
import { type LoadedModel, loadModel } from "../../src/model/loader.ts";
import { silentLogger } from "../../src/log.ts";
import { serve } from "../../src/runtime/serve.ts";
import { type ForwardInput, leftPad, loadReference, referenceForward } from "./reference.ts";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-loader-"));
const tiny = path.join(root, "tiny");
const PAD = 151643;
// Model loads take seconds on a small machine; Bun's default limit is 5 s a test.
const SLOW = { timeout: 120_000 };
const VOCAB = 151936;

/** Decoder feeds for `input` with an empty past, made with the model's own tensor factory. */
function feedsFor(model: LoadedModel, input: ForwardInput) {
  const { numHiddenLayers, numKeyValueHeads, headDim } = model.config;
  const rows = input.inputIds.length;
  const i64 = (m: number[][]) => model.tensor("int64", BigInt64Array.from(m.flat(), BigInt), [rows, m[0].length]);
  const feeds: Record<string, ReturnType<LoadedModel["tensor"]>> = {
    input_ids: i64(input.inputIds),
    attention_mask: i64(input.attentionMask),
    position_ids: i64(input.positionIds),
  };
  for (let i = 0; i < numHiddenLayers; i++) {
    for (const kv of ["key", "value"]) {
      feeds[`past_key_values.${i}.${kv}`] = model.tensor("float32", new Float32Array(0), [
        rows,
        numKeyValueHeads,
        0,
        headDim,
      ]);
    }
  }
  return feeds;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const load = (model: string, extra: Partial<Parameters<typeof loadModel>[0]> = {}) =>
  loadModel({ model, device: "cpu", cacheDir: path.join(root, "cache"), log: silentLogger, ...extra });

describe("loadModel", () => {
  let model: LoadedModel;
  before(async () => {
    await buildModel({ preset: "tiny", out: tiny, seed: 0 });
    model = await load(tiny);
  }, SLOW);
  after(async () => {
    await model?.dispose();
    fs.rmSync(root, { recursive: true, force: true });
  });

  test("loads a built tiny model on cpu with its config and tokenizer", () => {
    assert.equal(model.device, "cpu");
    assert.equal(model.dtype, "fp32");
    assert.equal(model.dir, tiny);
    const { raw: _raw, ...config } = model.config;
    assert.deepEqual(config, {
      modelType: "qwen3",
      hiddenSize: 64,
      numHiddenLayers: 2,
      numAttentionHeads: 4,
      numKeyValueHeads: 2,
      headDim: 16,
      vocabSize: VOCAB,
      maxPositionEmbeddings: 4096,
      eosTokenIds: [151645, 151643],
      bosTokenId: 151643,
      tieWordEmbeddings: true,
    });
    assert.deepEqual(model.tokenizer.encode("Hello, world"), [9707, 11, 1879]);
    assert.ok(model.inputNames.includes("past_key_values.1.value"));
    assert.ok(model.outputNames.includes("present.0.key"));
    const pastKey = model.inputMetadata.find((m) => m.name === "past_key_values.0.key");
    assert.ok(pastKey?.isTensor);
    assert.equal(pastKey.type, "float32");
  });

  test("forward on a left-padded batch matches the reference forward", SLOW, async () => {
    const input = leftPad([[100, 200, 300, 400, 500, 600, 700], [151644, 872, 198]], PAD);
    const out = await model.forward(feedsFor(model, input));
    const ref = referenceForward(loadReference(tiny), input);
    assert.deepEqual(out.logits.dims, [2, 7, VOCAB]);
    const diff = maxDiff(out.logits.data as Float32Array, ref.logits);
    assert.ok(diff < 1e-4, `logits differ from the reference by ${diff}`);
    assert.ok(maxDiff(out["present.1.key"].data as Float32Array, ref.present[1].key) < 1e-4);
  });

  test("forward takes transformers.js tensors and overlapping calls all complete", async () => {
    const input = leftPad([[9707, 11, 1879]], PAD);
    const feeds: Record<string, unknown> = { ...feedsFor(model, input) };
    feeds.input_ids = new TransformersTensor("int64", BigInt64Array.from([9707n, 11n, 1879n]), [1, 3]);
    const runs = await Promise.all([1, 2, 3].map(() => model.forward(feeds as Parameters<LoadedModel["forward"]>[0])));
    for (const out of runs) assert.deepEqual(out.logits.data, runs[0].logits.data);
  });

  test("a missing directory is a ModelLoadError naming it", async () => {
    const missing = path.join(root, "nowhere");
    await assert.rejects(load(missing), (err: unknown) => {
      assert.ok(err instanceof ModelLoadError);
      assert.equal(err.path, missing);
      assert.match(err.message, /nowhere does not exist/);
      return true;
    });
  });

  test("a missing ONNX file is a ModelLoadError naming the file and the dtypes present", async () => {
    await assert.rejects(load(tiny, { dtype: "q4" }), (err: unknown) => {
      assert.ok(err instanceof ModelLoadError);
      assert.equal(err.path, path.join(tiny, "onnx", "model_q4.onnx"));
      assert.match(err.message, /lacks onnx\/model_q4\.onnx \(dtype q4\); dtypes present: fp32/);
      return true;
    });
  });

  test("missing tokenizer files and a bad config.json are ModelLoadErrors", async () => {
    const broken = path.join(root, "broken");
    fs.mkdirSync(path.join(broken, "onnx"), { recursive: true });
    fs.copyFileSync(path.join(tiny, "config.json"), path.join(broken, "config.json"));
    await assert.rejects(load(broken), /lacks tokenizer\.json, tokenizer_config\.json/);
    for (const file of ["tokenizer.json", "tokenizer_config.json"]) {
      fs.copyFileSync(path.join(tiny, file), path.join(broken, file));
    }
    await assert.rejects(load(broken), /lacks onnx\/model\.onnx \(dtype fp32\); it has no onnx\/model\*\.onnx at all/);
    fs.writeFileSync(path.join(broken, "onnx", "model.onnx"), "");
    fs.writeFileSync(path.join(broken, "config.json"), JSON.stringify({ model_type: "qwen3", hidden_size: 64 }));
    await assert.rejects(load(broken), (err: unknown) => {
      assert.ok(err instanceof ModelLoadError);
      assert.equal(err.path, path.join(broken, "config.json"));
      assert.match(err.message, /not a usable decoder config \(num_hidden_layers: .*/);
      return true;
    });
    fs.writeFileSync(path.join(broken, "config.json"), "{ not json");
    await assert.rejects(load(broken), /config\.json is not valid JSON/);
  });

  test("a name that is neither a directory nor a hub id is a ModelLoadError", async () => {
    await assert.rejects(load("not a model"), /neither an existing directory nor a hub id/);
  });

  test("a hub id is downloaded through transformers.js into the cache, then loads like a directory", SLOW, async () => {
    // A stand-in for the hub: serves the built model at <id>/resolve/main/<file>.
    const hub = await serve((req) => {
      const match = new URL(req.url).pathname.match(/^\/test-org\/tiny\/resolve\/main\/(.+)$/);
      const file = match && path.join(tiny, decodeURIComponent(match[1]));
      if (!file || !fs.existsSync(file)) return new Response("not found", { status: 404 });
      return new Response(fs.readFileSync(file));
    }, { hostname: "127.0.0.1", port: 0 });
    const remoteHost = transformersEnv.remoteHost;
    const cacheDir = path.join(root, "hub-cache");
    try {
      const hubUrl = `http://127.0.0.1:${hub.port}`;
      const fromHub = (device: "cpu" | "wasm") =>
        loadModel({ model: "test-org/tiny", device, cacheDir, hubUrl, log: silentLogger });
      // wasm first: its session is opened from the files, so they must be downloaded before it opens.
      const wasm = await fromHub("wasm");
      assert.equal(wasm.dir, path.join(cacheDir, "hub", "test-org", "tiny"));
      assert.ok(fs.existsSync(path.join(wasm.dir, "onnx", "model.onnx")));
      assert.deepEqual(wasm.config.eosTokenIds, [151645, 151643]);
      const cpu = await fromHub("cpu");
      const input = leftPad([[9707, 11, 1879]], PAD);
      const [a, b] = await Promise.all([wasm.forward(feedsFor(wasm, input)), cpu.forward(feedsFor(cpu, input))]);
      const diff = maxDiff(a.logits.data as Float32Array, b.logits.data as Float32Array);
      assert.ok(diff < 1e-4, `wasm and cpu differ by ${diff}`);
      await Promise.all([wasm.dispose(), cpu.dispose()]);
    } finally {
      transformersEnv.remoteHost = remoteHost;
      await hub.close();
    }
  });

  test("--revision downloads a hub id at that revision, into a cache of its own beside main's", SLOW, async () => {
    // A stand-in for the hub with two revisions of one repository: main is the tiny model, v2 other weights.
    const v2 = path.join(root, "tiny-v2");
    await buildModel({ preset: "tiny", out: v2, seed: 1 });
    const asked: string[] = [];
    const hub = await serve((req) => {
      const match = new URL(req.url).pathname.match(/^\/test-org\/tiny\/resolve\/([^/]+)\/(.+)$/);
      // transformers.js (4.3) asks whether main has a tokenizer_config.json whatever the revision, and reads
      // nothing of the answer but that it exists; every other request names the revision.
      if (match && !(match[1] === "main" && match[2] === "tokenizer_config.json" && asked.includes("v2"))) {
        asked.push(decodeURIComponent(match[1]));
      }
      const dir = match && { main: tiny, v2 }[decodeURIComponent(match[1])];
      const file = dir && path.join(dir, decodeURIComponent(match[2]));
      if (!file || !fs.existsSync(file)) return new Response("not found", { status: 404 });
      return new Response(fs.readFileSync(file));
    }, { hostname: "127.0.0.1", port: 0 });
    const remoteHost = transformersEnv.remoteHost;
    const cacheDir = path.join(root, "hub-cache-revisions");
    try {
      const hubUrl = `http://127.0.0.1:${hub.port}`;
      const lines: string[] = [];
      const log = { ...silentLogger, info: (m: string) => lines.push(m) };
      const fromHub = (revision?: string) => loadModel({ model: "test-org/tiny", device: "cpu", cacheDir, hubUrl, revision, log });
      const atV2 = await fromHub("v2");
      // The graph (39 MB of embeddings) is big enough to report; the small files are not.
      assert.ok(lines.some((l) => /^downloading onnx\/model\.onnx: .*done/.test(l)), lines.join("\n"));
      assert.ok(!lines.some((l) => /downloading (config|tokenizer)/.test(l)), lines.join("\n"));
      assert.deepEqual([...new Set(asked)], ["v2"], "only revision v2 was asked for");
      assert.equal(atV2.dir, path.join(cacheDir, "hub", "test-org", "tiny", "v2"));
      assert.equal(fs.existsSync(path.join(cacheDir, "hub", "test-org", "tiny", "onnx")), false, "main's files are not there");
      asked.length = 0;
      const atMain = await fromHub();
      assert.deepEqual([...new Set(asked)], ["main"]);
      assert.equal(atMain.dir, path.join(cacheDir, "hub", "test-org", "tiny"));
      // Each serves its own revision's weights: the same as the folder it came from, and not the other's.
      const input = leftPad([[9707, 11, 1879]], PAD);
      const local = await load(v2);
      const [a, b, c] = await Promise.all([atV2, atMain, local].map((m) => m.forward(feedsFor(m, input))));
      const logits = (r: typeof a) => r.logits.data as Float32Array;
      assert.ok(maxDiff(logits(a), logits(c)) < 1e-5, "revision v2 serves v2's weights");
      assert.ok(maxDiff(logits(a), logits(b)) > 1e-2, "main serves other weights than v2");
      await Promise.all([atV2.dispose(), atMain.dispose(), local.dispose()]);
    } finally {
      transformersEnv.remoteHost = remoteHost;
      await hub.close();
    }
  });
});

describe("built-in model", () => {
  const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-builtin-"));
  after(() => fs.rmSync(cacheDir, { recursive: true, force: true }));

  test(
    "ensureBuiltinModel builds the tiny preset once, even when asked twice at once, and reuses it",
    SLOW,
    async () => {
      const [first, second] = await Promise.all([ensureBuiltinModel(cacheDir), ensureBuiltinModel(cacheDir)]);
      assert.equal(first, path.join(cacheDir, "models", BUILTIN_MODEL.preset));
      assert.equal(second, first);
      const record = JSON.parse(fs.readFileSync(path.join(first, "gym-edge-build.json"), "utf8"));
      assert.equal(record.preset, "tiny");
      assert.equal(record.seed, 0);
      const onnx = path.join(first, "onnx", "model.onnx");
      const builtAt = fs.statSync(onnx).mtimeMs;
      assert.equal(await ensureBuiltinModel(cacheDir), first);
      assert.equal(fs.statSync(onnx).mtimeMs, builtAt);
      // No staging folders are left behind.
      assert.deepEqual(fs.readdirSync(path.join(cacheDir, "models")), ["tiny"]);
    },
  );

  test("defaultCacheDir prefers GYM_EDGE_CACHE, then XDG_CACHE_HOME, then ~/.cache", () => {
    assert.equal(defaultCacheDir({ GYM_EDGE_CACHE: "/a", XDG_CACHE_HOME: "/b", HOME: "/h" }), path.resolve("/a"));
    assert.equal(defaultCacheDir({ XDG_CACHE_HOME: "/b", HOME: "/h" }), path.join(path.resolve("/b"), "gym-edge"));
    assert.equal(defaultCacheDir({ HOME: "/h" }), path.join("/h", ".cache", "gym-edge"));
    assert.equal(defaultCacheDir({ GYM_EDGE_CACHE: "", HOME: "/h" }), path.join("/h", ".cache", "gym-edge"));
  });
});
