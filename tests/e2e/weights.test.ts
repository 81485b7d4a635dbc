/**
 * The weight API on a real server on loopback with the tiny model, against the shapes vLLM and SGLang define (the
 * expected JSON is written from their routers and docs, not from our answers): vLLM's phased disk update
 * (init_weight_transfer_engine, start_weight_update, update_weights {update_info: {path}}, finish_weight_update
 * {weight_version}), update_weight_version, weight_info; the weight checker (checksums differ across a refit,
 * compare against a trainer's own checksum file passes for the right weights and fails for the wrong ones, 409 while
 * paused or asleep); SGLang's update_weights_from_disk and get_weight_version; and weight_version beside
 * policy_version in chat, completions, tokens-in generate and responses, streamed or not.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { serverApp, type StartedServer, startServer } from "../../src/server.ts";
import { writeCheckpoint } from "../support/checkpoint.ts";
import { testCacheDir } from "../support/served.ts";
import { tinyWithSeed } from "../support/weights.ts";

const SLOW = { timeout: 240_000 };
/** vLLM's key prefix of a single-rank engine (dp:pp:pcp:tp:ep). */
const RANK = "dp0:pp0:pcp0:tp0:ep0:";

// deno-lint-ignore no-explicit-any
type Json = any;

async function request(
  base: string,
  method: string,
  route: string,
  body?: unknown,
): Promise<{ status: number; json: Json }> {
  const res = await fetch(base + route, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text === "" ? null : JSON.parse(text) };
}

async function ok(base: string, method: string, route: string, body?: unknown): Promise<Json> {
  const { status, json } = await request(base, method, route, body);
  assert.equal(status, 200, `${route}: ${JSON.stringify(json)}`);
  return json;
}

/**
 * What a trainer writes beside its checkpoint: the SHA-256 of each saved tensor's bytes, by name. Read here straight
 * from the safetensors layout (8-byte header length, JSON header, data), independently of the server's reader.
 */
function trainerChecksums(dir: string): Record<string, string> {
  const file = fs.readFileSync(path.join(dir, "model.safetensors"));
  const headerLength = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + headerLength).toString("utf8"));
  const out: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header) as [string, Json][]) {
    if (name === "__metadata__") continue;
    const [begin, end] = entry.data_offsets;
    out[name] = createHash("sha256").update(file.subarray(8 + headerLength + begin, 8 + headerLength + end)).digest(
      "hex",
    );
  }
  return out;
}

/** Every SSE data chunk of a streamed response (the JSON ones). */
async function chunks(base: string, route: string, body: unknown): Promise<Json[]> {
  const res = await fetch(base + route, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 200);
  const text = await res.text();
  // Each event's data line (the Responses API names its events on an "event:" line before it).
  return text.split("\n\n").map((e) => e.split("\n").find((line) => line.startsWith("data: "))?.slice(6))
    .filter((data) => data !== undefined && data !== "[DONE]").map((data) => JSON.parse(data!));
}

describe("the weight API", () => {
  let server: StartedServer;
  let base: string;
  let scratch: string;
  let seed1: string;
  let checkpoint0: string;
  let checkpoint1: string;

  before(async () => {
    seed1 = await tinyWithSeed(1);
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-weights-"));
    checkpoint0 = path.join(scratch, "step-0");
    checkpoint1 = path.join(scratch, "step-1");
    // BF16, as trainers save: the digests are over the bytes as stored.
    await writeCheckpoint(checkpoint0, "tiny", 0, "BF16");
    await writeCheckpoint(checkpoint1, "tiny", 1, "BF16");
    const config = ServerConfig.parse({
      port: 0,
      device: "cpu",
      cacheDir: testCacheDir(),
      maxNumSeqs: 4,
      logRequests: false,
    });
    server = await startServer(config, silentLogger);
    await server.ready;
    base = `http://127.0.0.1:${server.port}`;
  });
  after(async () => {
    await server.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  test(
    "vLLM's phased disk update: init, start, update_weights {update_info: {path}}, finish names the weights",
    SLOW,
    async () => {
      // vLLM's api_router: init answers {"message": "Weight transfer initialized"}, 400 without init_info.
      assert.deepEqual(await ok(base, "POST", "/init_weight_transfer_engine", { init_info: {} }), {
        message: "Weight transfer initialized",
      });
      assert.equal((await request(base, "POST", "/init_weight_transfer_engine", {})).status, 400);
      const before = (await ok(base, "GET", "/version")).policy_version;
      assert.deepEqual(await ok(base, "POST", "/start_weight_update"), { message: "Weight update started" });
      // The disk backend holds one update session at a time.
      assert.equal((await request(base, "POST", "/start_weight_update")).status, 409);
      const updated = await ok(base, "POST", "/update_weights", { update_info: { path: checkpoint1 } });
      assert.equal(updated.message, "Weights updated");
      assert.equal(updated.policy_version, before + 1);
      assert.deepEqual(await ok(base, "POST", "/finish_weight_update", { weight_version: "step-1" }), {
        message: "Weight update finished",
      });
      assert.deepEqual(await ok(base, "GET", "/weight_info"), { weight_version: "step-1" });
      // One rank serves: vLLM's world size, with data parallelism counted or not.
      assert.deepEqual(await ok(base, "GET", "/get_world_size"), { world_size: 1 });
      assert.deepEqual(await ok(base, "GET", "/get_world_size?include_dp=false"), { world_size: 1 });
      // SGLang's reading of the same.
      assert.deepEqual(await ok(base, "GET", "/get_weight_version"), { weight_version: "step-1" });
      // update_weight_version: vLLM answers {success, new_version}; SGLang adds message.
      const renamed = await ok(base, "POST", "/update_weight_version", { new_version: "step-1b" });
      assert.equal(renamed.success, true);
      assert.equal(renamed.new_version, "step-1b");
      assert.equal(typeof renamed.message, "string");
      assert.deepEqual(await ok(base, "GET", "/weight_info"), { weight_version: "step-1b" });
      assert.equal((await request(base, "POST", "/update_weight_version", {})).status, 400);
      // gym-edge's own {path} body keeps working, with the weight version given beside it.
      const legacy = await ok(base, "POST", "/update_weights", { path: checkpoint0, weight_version: "step-0" });
      assert.equal(legacy.status, "ok");
      assert.equal(legacy.policy_version, before + 2);
      assert.equal(legacy.weight_version, "step-0");
      assert.deepEqual(await ok(base, "GET", "/weight_info"), { weight_version: "step-0" });
      // A failed load is a 4xx and closes the session it was in.
      await ok(base, "POST", "/start_weight_update");
      assert.equal(
        (await request(base, "POST", "/update_weights", { update_info: { path: "/no/such/checkpoint" } })).status,
        400,
      );
      await ok(base, "POST", "/start_weight_update");
      await ok(base, "POST", "/finish_weight_update", {});
      assert.deepEqual(
        await ok(base, "GET", "/weight_info"),
        { weight_version: "step-0" },
        "finish without a name keeps the name",
      );
      assert.equal((await request(base, "POST", "/update_weights", { update_info: {} })).status, 400);
    },
  );

  test("weight_version is reported beside policy_version in every answer, streamed or not", SLOW, async () => {
    await ok(base, "POST", "/update_weights", { path: seed1, weight_version: "v-seed1" });
    const { policy_version: version } = await ok(base, "GET", "/version");
    assert.deepEqual(await ok(base, "GET", "/version").then((v) => v.weight_version), "v-seed1");
    const expect = (body: Json, where: string) => {
      assert.equal(body.policy_version, version, where);
      assert.equal(body.weight_version, "v-seed1", where);
    };
    const messages = [{ role: "user", content: "hi" }];
    expect(await ok(base, "POST", "/v1/chat/completions", { messages, max_tokens: 3 }), "chat");
    for (const c of await chunks(base, "/v1/chat/completions", { messages, max_tokens: 3, stream: true })) {
      expect(c, "chat chunk");
    }
    expect(await ok(base, "POST", "/v1/completions", { prompt: "hi", max_tokens: 3 }), "completion");
    for (const c of await chunks(base, "/v1/completions", { prompt: "hi", max_tokens: 3, stream: true })) {
      expect(c, "completion chunk");
    }
    const generate = { token_ids: [1000, 1001], sampling_params: { max_tokens: 3 } };
    expect(await ok(base, "POST", "/inference/v1/generate", generate), "generate");
    for (const c of await chunks(base, "/inference/v1/generate", { ...generate, stream: true })) {
      expect(c, "generate chunk");
    }
    expect(await ok(base, "POST", "/v1/responses", { input: "hi", max_output_tokens: 3 }), "response");
    const events = await chunks(base, "/v1/responses", { input: "hi", max_output_tokens: 3, stream: true });
    assert.ok(events.length > 0);
    for (const e of events) expect(e, `response event ${e.type}`);
    const sleeping = await ok(base, "GET", "/is_sleeping");
    expect(sleeping, "is_sleeping");
  });

  test(
    "weight checker: digests change with a refit and compare against the trainer's checksum file",
    SLOW,
    async () => {
      // The served ONNX model's initializers: weights by name, without the graph's own constants.
      await ok(base, "POST", "/update_weights", { path: seed1 });
      const onnx = (await ok(base, "POST", "/weight_checker", { action: "checksum" })).checksums;
      assert.ok(onnx[`${RANK}model.embed_tokens.weight`], Object.keys(onnx).join(", "));
      assert.ok(Object.keys(onnx).every((k) => k.startsWith(RANK) && !k.includes("const_") && !k.includes("inv_freq")));
      assert.ok(Object.values(onnx).every((d) => /^[0-9a-f]{64}$/.test(String(d))));

      // A checkpoint: its digests are exactly what the trainer computes over the tensors it saved.
      await ok(base, "POST", "/update_weights", { update_info: { path: checkpoint0 } });
      const file0 = trainerChecksums(checkpoint0);
      const file1 = trainerChecksums(checkpoint1);
      const served0 = (await ok(base, "POST", "/weight_checker", { action: "checksum" })).checksums;
      assert.deepEqual(served0, Object.fromEntries(Object.entries(file0).map(([k, v]) => [RANK + k, v])));
      // vLLM's compare: {match, mismatches, ranks}; the trainer's names without a rank prefix are this rank's.
      assert.deepEqual(await ok(base, "POST", "/weight_checker", { action: "compare", baseline: file0 }), {
        match: true,
        mismatches: [],
        ranks: [RANK],
      });

      await ok(base, "POST", "/update_weights", { update_info: { path: checkpoint1 } });
      const served1 = (await ok(base, "POST", "/weight_checker", { action: "checksum" })).checksums;
      assert.notDeepEqual(served1, served0);
      const changed = Object.keys(served1).filter((k) => served1[k] !== served0[k]);
      assert.ok(changed.includes(`${RANK}model.embed_tokens.weight`), "the embedding's digest changed");
      const wrong = await ok(base, "POST", "/weight_checker", { action: "compare", baseline: file0 });
      assert.equal(wrong.match, false);
      assert.deepEqual(wrong.mismatches, changed.sort());
      assert.deepEqual(await ok(base, "POST", "/weight_checker", { action: "compare", baseline: file1 }), {
        match: true,
        mismatches: [],
        ranks: [RANK],
      });
      // A baseline in vLLM's own keys (the checksum answer saved) compares as well; a missing tensor is a mismatch.
      const [dropped, ...kept] = Object.keys(served1);
      const partial = Object.fromEntries(kept.map((k) => [k, served1[k]]));
      assert.deepEqual(await ok(base, "POST", "/weight_checker", { action: "compare", baseline: partial }), {
        match: false,
        mismatches: [dropped],
        ranks: [RANK],
      });
      // finish_weight_update with a baseline: a mismatch is refused and the weights keep no new name.
      await ok(base, "POST", "/start_weight_update");
      assert.equal(
        (await request(base, "POST", "/finish_weight_update", { weight_version: "bad", baseline: file0 })).status,
        409,
      );
      assert.notEqual((await ok(base, "GET", "/weight_info")).weight_version, "bad");
      await ok(base, "POST", "/start_weight_update");
      await ok(base, "POST", "/finish_weight_update", { weight_version: "good", baseline: file1 });
      assert.equal((await ok(base, "GET", "/weight_info")).weight_version, "good");
    },
  );

  test(
    "weight checker: 409 while paused or asleep, 400 for a bad action; files changed after loading are refused",
    SLOW,
    async () => {
      await ok(base, "POST", "/pause?mode=abort");
      try {
        for (const body of [{ action: "checksum" }, { action: "compare" }, { action: "compare", baseline: {} }]) {
          assert.equal((await request(base, "POST", "/weight_checker", body)).status, 409, JSON.stringify(body));
        }
      } finally {
        await ok(base, "POST", "/resume");
      }
      await ok(base, "POST", "/sleep?level=1");
      try {
        assert.equal((await request(base, "POST", "/weight_checker", { action: "checksum" })).status, 409);
      } finally {
        await ok(base, "POST", "/wake_up");
      }
      await ok(base, "POST", "/weight_checker", { action: "checksum" });
      const bad = await request(base, "POST", "/weight_checker", { action: "hash" });
      assert.equal(bad.status, 400);
      assert.match(bad.json.error.message, /action must be one of checksum\|reset\|compare, got "hash"/);
      const noBaseline = await request(base, "POST", "/weight_checker", { action: "compare" });
      assert.equal(noBaseline.status, 400);
      assert.match(noBaseline.json.error.message, /baseline/);

      // A trainer saving its next step over the directory the served weights came from: their digests are gone.
      const reused = path.join(scratch, "latest");
      fs.cpSync(checkpoint0, reused, { recursive: true });
      await ok(base, "POST", "/update_weights", { path: reused });
      fs.copyFileSync(path.join(checkpoint1, "model.safetensors"), path.join(reused, "model.safetensors"));
      fs.utimesSync(path.join(reused, "model.safetensors"), new Date(), new Date(Date.now() + 5000));
      const stale = await request(base, "POST", "/weight_checker", { action: "checksum" });
      assert.equal(stale.status, 409);
      assert.match(stale.json.error.message, /changed since/);
    },
  );

  test("vLLM's weight-update check: checksum, reset, transfer the same weights, compare", SLOW, async () => {
    await ok(base, "POST", "/update_weights", { update_info: { path: checkpoint0 } });
    const baseline = (await ok(base, "POST", "/weight_checker", { action: "checksum" })).checksums;
    const { policy_version: before } = await ok(base, "GET", "/version");
    const greedy = {
      prompt: [1000, 1001, 1002],
      max_tokens: 6,
      temperature: 0,
      ignore_eos: true,
      return_token_ids: true,
    };
    const tokens = (await ok(base, "POST", "/v1/completions", greedy)).choices[0].token_ids;
    assert.deepEqual(await ok(base, "POST", "/weight_checker", { action: "reset" }), { status: "reset" });
    // Other weights serve now, under a new policy version, and nothing of the baseline matches.
    assert.equal((await ok(base, "GET", "/version")).policy_version, before + 1);
    const reset = await ok(base, "POST", "/weight_checker", { action: "compare", baseline });
    assert.equal(reset.match, false);
    assert.deepEqual(reset.mismatches.filter((k: string) => k in baseline), Object.keys(baseline).sort());
    assert.notDeepEqual((await ok(base, "POST", "/v1/completions", greedy)).choices[0].token_ids, tokens);
    await ok(base, "POST", "/start_weight_update");
    await ok(base, "POST", "/update_weights", { update_info: { path: checkpoint0 } });
    await ok(base, "POST", "/finish_weight_update", { weight_version: "step-0", baseline });
    assert.deepEqual(await ok(base, "POST", "/weight_checker", { action: "compare", baseline }), {
      match: true,
      mismatches: [],
      ranks: [RANK],
    });
    assert.deepEqual((await ok(base, "POST", "/v1/completions", greedy)).choices[0].token_ids, tokens);
    // Paused, reset is refused as every action is.
    await ok(base, "POST", "/pause?mode=abort");
    try {
      assert.equal((await request(base, "POST", "/weight_checker", { action: "reset" })).status, 409);
    } finally {
      await ok(base, "POST", "/resume");
    }
  });

  test("SGLang's update_weights_from_disk answers {success, message, num_paused_requests}", SLOW, async () => {
    const before = (await ok(base, "GET", "/version")).policy_version;
    // A long request in flight: abort_all_requests ends it (finish reason abort, its tokens kept) before the update.
    const long = await fetch(`${base}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        prompt: [1000, 1001],
        max_tokens: 2000,
        ignore_eos: true,
        stream: true,
        return_token_ids: true,
      }),
    });
    const reader = long.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = (await reader.read()).value ?? "";
    while (!text.includes("token_ids")) text += (await reader.read()).value ?? "";
    const res = await request(base, "POST", "/update_weights_from_disk", {
      model_path: checkpoint1,
      weight_version: "sglang-1",
      abort_all_requests: true,
      flush_cache: true,
    });
    assert.equal(res.status, 200, JSON.stringify(res.json));
    assert.equal(res.json.success, true);
    assert.equal(typeof res.json.message, "string");
    assert.equal(res.json.num_paused_requests, 0);
    assert.equal(res.json.policy_version, before + 1);
    for (let part = await reader.read(); !part.done; part = await reader.read()) text += part.value;
    const finish = [...text.matchAll(/"finish_reason":"(\w+)"/g)].map((m) => m[1]);
    assert.deepEqual(finish, ["abort"]);
    const generated = [...text.matchAll(/"token_ids":\[(\d+)\]/g)].length;
    assert.ok(generated > 0 && generated < 2000, `partial tokens: ${generated}`);
    assert.deepEqual(await ok(base, "GET", "/get_weight_version"), { weight_version: "sglang-1" });
    const failed = await request(base, "POST", "/update_weights_from_disk", { model_path: "/no/such/model" });
    assert.equal(failed.status, 400);
    assert.equal(failed.json.success, false);
    assert.match(failed.json.message, /no file or directory/);
    assert.equal(failed.json.num_paused_requests, 0);
    const missing = await request(base, "POST", "/update_weights_from_disk", {});
    assert.equal(missing.json.success, false);
    assert.match(missing.json.message, /model_path/);
    assert.equal((await ok(base, "GET", "/version")).policy_version, before + 1, "failed updates change nothing");
  });

  test(
    "the weight routes take the admin key, as the rest of the control plane, and go with --disable-control-plane",
    SLOW,
    async () => {
      const served = await server.ready;
      const flags = { device: "cpu", cacheDir: testCacheDir(), logRequests: false };
      const guarded = serverApp(ServerConfig.parse({ ...flags, apiKey: "sk-user", adminApiKey: "sk-admin" }), served, {
        log: silentLogger,
      });
      const calls: [string, string, unknown?][] = [
        ["GET", "/weight_info"],
        ["GET", "/get_weight_version"],
        ["GET", "/get_world_size"],
        ["POST", "/weight_checker", { action: "checksum" }],
        ["POST", "/init_weight_transfer_engine", { init_info: {} }],
      ];
      for (const [method, route, body] of calls) {
        for (const [key, status] of [["sk-user", 401], ["sk-admin", 200]] as const) {
          const res = await guarded.request(route, {
            method,
            headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
            body: body === undefined ? undefined : JSON.stringify(body),
          });
          assert.equal(res.status, status, `${route} with ${key}`);
        }
      }
      const off = serverApp(ServerConfig.parse({ ...flags, disableControlPlane: true }), served, { log: silentLogger });
      assert.equal((await off.request("/weight_info")).status, 404);
      assert.equal(
        (await off.request("/weight_checker", { method: "POST", body: '{"action":"checksum"}' })).status,
        404,
      );
      assert.equal(typeof (await (await off.request("/version")).json()).policy_version, "number");
    },
  );
});
