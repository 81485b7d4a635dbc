/**
 * What serve flags change in the answers: --seed (the seeds of requests that give none), --generation-config (the
 * model's default sampling) and --chat-template (the template every conversation is rendered with).
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Completion } from "../../src/api/protocol.ts";
import { TokenizeResponse } from "../../src/api/schemas.ts";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { GenerationConfigError, readSamplingDefaults } from "../../src/model/generation-defaults.ts";
import { serverApp } from "../../src/server.ts";
import { openServedTiny, testCacheDir } from "../support/served.ts";
import { postJson } from "./app-fixture.ts";

const SLOW = { timeout: 120_000 };
const served = await openServedTiny({ maxModelLen: 512 });
const dirs: string[] = [];
after(() => dirs.forEach((dir) => rmSync(dir, { recursive: true, force: true })));

/** A folder holding `generationConfig` as its generation_config.json. */
function folderWith(generationConfig: unknown): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "gym-edge-generation-config-"));
  dirs.push(dir);
  writeFileSync(path.join(dir, "generation_config.json"), JSON.stringify(generationConfig));
  return dir;
}

/** An app over the shared model with `flags` (camelCase) as its server flags. */
function appWith(flags: Record<string, unknown> = {}, model = served) {
  const config = ServerConfig.parse({ device: "cpu", cacheDir: testCacheDir(), logRequests: false, ...flags });
  return serverApp(config, model, { log: silentLogger });
}

/** The token ids a completion generates. */
async function completion(app: ReturnType<typeof appWith>, body: Record<string, unknown>): Promise<number[]> {
  const res = await app.request("/v1/completions", postJson({ prompt: "Once upon a time", return_token_ids: true, ...body }));
  assert.equal(res.status, 200, await res.clone().text());
  return Completion.parse(await res.json()).choices[0].token_ids!;
}

test("--seed: requests without a seed sample the same tokens after a restart, and differ from one another", SLOW, async () => {
  const body = { max_tokens: 8, ignore_eos: true };
  const first = appWith({ seed: 7 });
  const run1 = [await completion(first, body), await completion(first, body)];
  assert.notDeepEqual(run1[0], run1[1], "each request draws its own seed");
  const restarted = appWith({ seed: 7 });
  assert.deepEqual([await completion(restarted, body), await completion(restarted, body)], run1);
  const other = appWith({ seed: 8 });
  assert.notDeepEqual(await completion(other, body), run1[0]);
  const unseeded = appWith();
  assert.notDeepEqual(await completion(unseeded, body), run1[0]);
  // A request's own seed wins, and -1 means "none" as in vLLM.
  assert.deepEqual(await completion(first, { ...body, seed: 3 }), await completion(unseeded, { ...body, seed: 3 }));
  const again = appWith({ seed: 7 });
  assert.deepEqual(await completion(again, { ...body, seed: -1 }), run1[0]);
});

test("generation_config.json: sampling a request leaves unset is the model's; max_new_tokens caps max_tokens", SLOW, async () => {
  const source = readSamplingDefaults(folderWith({ temperature: 0, max_new_tokens: 3 }), "unused");
  const app = appWith({}, { ...served, samplingDefaults: source });
  const greedy = await completion(app, { ignore_eos: true });
  assert.equal(greedy.length, 3, "max_new_tokens 3 instead of the 16 of completions");
  assert.deepEqual(await completion(app, { ignore_eos: true, max_tokens: 10, seed: 1 }), greedy, "greedy, and capped");
  const asked = await completion(app, { ignore_eos: true, temperature: 1, seed: 1 });
  const asked2 = await completion(app, { ignore_eos: true, temperature: 1, seed: 2 });
  assert.notDeepEqual(asked, asked2, "a request's own temperature wins");
  // --generation-config vllm: none of it.
  const plain = appWith({}, { ...served, samplingDefaults: readSamplingDefaults("vllm", "unused") });
  assert.equal((await completion(plain, { ignore_eos: true })).length, 16);
});

test("readSamplingDefaults keeps what differs from transformers' defaults, as vLLM, and refuses values no request may use", () => {
  const qwen3 = { temperature: 0.6, top_k: 20, top_p: 0.95, do_sample: true, eos_token_id: [1, 2] };
  const dir = folderWith(qwen3);
  const file = path.join(dir, "generation_config.json");
  assert.deepEqual(readSamplingDefaults("auto", dir), { defaults: { temperature: 0.6, top_p: 0.95, top_k: 20 }, source: file });
  assert.deepEqual(readSamplingDefaults(dir, "elsewhere").defaults, { temperature: 0.6, top_p: 0.95, top_k: 20 });
  assert.deepEqual(readSamplingDefaults("vllm", dir), { defaults: {}, source: null });
  // top_k 50 and temperature 1 are transformers' defaults: vLLM drops them, and so top_k stays off.
  const spelledOut = folderWith({ temperature: 1.0, top_k: 50, repetition_penalty: 1.1, min_p: 0.05, max_new_tokens: 64 });
  assert.deepEqual(readSamplingDefaults("auto", spelledOut).defaults, { min_p: 0.05, repetition_penalty: 1.1, max_tokens: 64 });
  assert.deepEqual(readSamplingDefaults("auto", dir, { temperature: 0.2 }).defaults, { temperature: 0.2, top_p: 0.95, top_k: 20 });
  const none = mkdtempSync(path.join(os.tmpdir(), "gym-edge-no-generation-config-"));
  dirs.push(none);
  assert.deepEqual(readSamplingDefaults("auto", none), { defaults: {}, source: null });
  assert.throws(
    () => readSamplingDefaults("auto", folderWith({ top_p: 0 })),
    (e: unknown) => e instanceof GenerationConfigError && /sets top_p to 0, but it must be above 0 and at most 1; --generation-config vllm/.test(e.message),
  );
});

test("a served model takes --generation-config and --chat-template at load, and the app renders with that template", SLOW, async () => {
  const template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}";
  const model = await openServedTiny({
    maxModelLen: 512,
    generationConfig: folderWith({ temperature: 0.5, max_new_tokens: 7 }),
    chatTemplate: template,
  });
  assert.deepEqual(model.samplingDefaults.defaults, { temperature: 0.5, max_tokens: 7 });
  const app = appWith({}, model);
  const res = await app.request("/tokenize", postJson({ messages: [{ role: "user", content: "Hi" }] }));
  assert.equal(res.status, 200);
  assert.deepEqual(TokenizeResponse.parse(await res.json()).tokens, model.tokenizer.encode("<user>Hi", { addSpecialTokens: false }));
  const chat = await app.request("/v1/chat/completions", postJson({ messages: [{ role: "user", content: "Hi" }], ignore_eos: true }));
  assert.equal(chat.status, 200);
  assert.equal((await chat.json()).usage.completion_tokens, 7);
});
