/**
 * Reliability against real servers on loopback, with the tiny model: weights updated under load (every request
 * completes or fails retriably, and afterwards outputs equal a fresh server on the new weights), an in-flight
 * update that pauses requests and resumes them on the new weights, clients that go away mid-request, a bounded
 * queue under overload, and graceful shutdown with and without time to finish.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { ServerConfig } from "../../src/config.ts";
import { SamplingParams } from "../../src/engine/sampling-params.ts";
import { silentLogger } from "../../src/log.ts";
import { loadServedModel, type ServedModel, type StartedServer, startServer } from "../../src/server.ts";
import { testCacheDir, tinyModelDir } from "../support/served.ts";
import { tinyWithSeed } from "../support/weights.ts";

const SLOW = { timeout: 120_000 };
const MODEL = "gym-edge/tiny";

function configOf(flags: Record<string, unknown>): ServerConfig {
  return ServerConfig.parse({ port: 0, device: "cpu", cacheDir: testCacheDir(), maxModelLen: 2048, logRequests: false, ...flags });
}

// deno-lint-ignore no-explicit-any
type Json = any;

/** The data of each server-sent event ("[DONE]" as is); stops reading (and drops the connection) when left early. */
async function* sseEvents(res: Response): AsyncGenerator<Json> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
        const data = buffer.slice(0, end).split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        buffer = buffer.slice(end + 2);
        if (data) yield data === "[DONE]" ? data : JSON.parse(data);
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

/** How a request ended: complete (with the policy versions its output named) or with a retriable error. */
type Outcome = { kind: "complete"; versions: number[] } | { kind: "retriable"; message: string };

async function post(base: string, path: string, body: unknown, signal?: AbortSignal): Promise<Response> {
  return await fetch(base + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal });
}

/** Sends one request (streamed or not) and checks that its end is one of the two acceptable ones. */
async function outcomeOf(base: string, path: string, body: Json): Promise<Outcome> {
  const res = await post(base, path, body);
  if (!body.stream) {
    const json = await res.json();
    if (res.status === 503) {
      assert.equal(res.headers.get("retry-after"), "1");
      assert.equal(json.error.type, "server_error");
      return { kind: "retriable", message: json.error.message };
    }
    assert.equal(res.status, 200, JSON.stringify(json));
    for (const choice of json.choices) assert.ok(["stop", "length"].includes(choice.finish_reason), choice.finish_reason);
    assert.equal(typeof json.policy_version, "number");
    return { kind: "complete", versions: [json.policy_version] };
  }
  assert.equal(res.status, 200);
  const versions: number[] = [];
  let finished = false;
  let done = false;
  for await (const event of sseEvents(res)) {
    if (event === "[DONE]") {
      done = true;
      continue;
    }
    assert.ok(!done, "nothing after [DONE]");
    if (event.error) {
      assert.equal(event.error.type, "server_error");
      return { kind: "retriable", message: event.error.message };
    }
    assert.equal(typeof event.policy_version, "number", "every chunk names its policy version");
    versions.push(event.policy_version);
    if (event.choices.some((c: Json) => c.finish_reason !== null && c.finish_reason !== undefined)) finished = true;
  }
  assert.ok(done && finished, "a stream that does not fail ends with a finish reason and [DONE]");
  return { kind: "complete", versions };
}

/** Greedy ids of `prompt` straight from an engine. */
async function engineGreedy(served: ServedModel, prompt: number[], maxTokens: number): Promise<number[]> {
  const params = SamplingParams.parse({ temperature: 0, max_tokens: maxTokens, ignore_eos: true });
  const ids: number[] = [];
  for await (const event of served.engine.submit(prompt, params).events) ids.push(event.tokenId);
  return ids;
}

/** Resolves once the engine holds nothing: no sequence running, waiting or held, no prefix block referenced. */
async function engineSettles(served: ServedModel, withinMs: number): Promise<void> {
  const deadline = performance.now() + withinMs;
  while (true) {
    const s = served.engine.stats();
    if (s.running === 0 && s.waiting === 0 && s.held === 0 && served.engine.cache.totalRefs === 0) return;
    if (performance.now() > deadline) assert.fail(`the engine still holds work: ${JSON.stringify(s)}, refs ${served.engine.cache.totalRefs}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function metricsText(base: string): Promise<string> {
  return await (await fetch(`${base}/metrics`)).text();
}

function sampleOf(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  assert.ok(line, `no series ${series}`);
  return Number(line.slice(series.length + 1));
}

describe("one server through weight updates, disconnects and a hurried shutdown", () => {
  let server: StartedServer;
  let served: ServedModel;
  let base: string;
  let seed0: string;
  let seed1: string;
  let seed2: string;
  let fresh2: ServedModel;
  let closed = false;

  before(async () => {
    [seed0, seed1, seed2] = await Promise.all([tinyModelDir(), tinyWithSeed(1), tinyWithSeed(2)]);
    server = await startServer(configOf({ maxNumSeqs: 8 }), silentLogger);
    served = await server.ready;
    base = `http://127.0.0.1:${server.port}`;
    fresh2 = await loadServedModel(configOf({ model: seed2, maxNumSeqs: 2 }), silentLogger);
  });
  after(async () => {
    await fresh2.engine.runner.dispose();
    if (!closed) await server.close();
  });

  const update = async (body: Json) => {
    const res = await post(base, "/update_weights", body);
    const json = await res.json();
    assert.equal(res.status, 200, JSON.stringify(json));
    return json;
  };

  test("64 requests from 32 clients while the weights are updated twice (finish, then abort)", SLOW, async () => {
    const prompt = (i: number) => [1000 + i, 2000 + i, 3000, 4000];
    const outcomes: Outcome[] = [];
    let started = 0;
    let firstDone!: () => void;
    const someDone = new Promise<void>((resolve) => (firstDone = resolve));
    const client = async (i: number) => {
      for (let round = 0; round < 2; round++) {
        started++;
        const streamed = (i + round) % 2 === 0;
        const outcome = i % 3 === 0
          ? await outcomeOf(base, "/v1/chat/completions", {
            messages: [{ role: "user", content: `question ${i}.${round}` }],
            max_tokens: 8,
            seed: i,
            stream: streamed,
          })
          : await outcomeOf(base, "/v1/completions", { prompt: prompt(i), max_tokens: 8, seed: i, stream: streamed });
        outcomes.push(outcome);
        firstDone();
      }
    };
    const clients = Array.from({ length: 32 }, (_, i) => client(i));
    await someDone;
    const first = await update({ path: seed1 });
    assert.equal(first.policy_version, 1);
    assert.equal(first.aborted, 0, "finish mode ends nothing early");
    const second = await update({ path: seed2, mode: "abort" });
    assert.equal(second.policy_version, 2);
    await Promise.all(clients);

    assert.equal(started, 64);
    assert.equal(outcomes.length, 64);
    const failed = outcomes.filter((o) => o.kind === "retriable");
    for (const o of failed) assert.match(o.message, /policy weights are being updated to version 2; retry/);
    assert.equal(failed.length, second.aborted, "exactly the requests the abort ended failed");
    for (const o of outcomes) if (o.kind === "complete") for (const v of o.versions) assert.ok(v >= 0 && v <= 2);
    await engineSettles(served, 10_000);

    // The refit is exact: greedy output is what a fresh server on seed 2 generates.
    const res = await post(base, "/v1/completions", { prompt: prompt(99), max_tokens: 12, temperature: 0, ignore_eos: true, return_token_ids: true });
    const body = await res.json();
    assert.equal(body.policy_version, 2);
    assert.deepEqual(body.choices[0].token_ids, await engineGreedy(fresh2, prompt(99), 12));
  });

  test("pause: streams stop between steps, resume on the new weights with their KV recomputed", SLOW, async () => {
    await update({ path: seed0 });
    const version = served.engine.policyVersion;
    const prompts = [[5000, 5001, 5002], [6000, 6001, 6002, 6003, 6004]];
    const control = prompts.map(() => new AbortController());
    const tokens = prompts.map(() => [] as { id: number; version: number }[]);
    const readers = prompts.map(async (prompt, i) => {
      const res = await post(base, "/v1/completions", {
        prompt,
        max_tokens: 1500,
        temperature: 0,
        ignore_eos: true,
        stream: true,
        return_token_ids: true,
      }, control[i].signal);
      try {
        for await (const event of sseEvents(res)) {
          if (event === "[DONE]") break;
          assert.equal(event.error, undefined, JSON.stringify(event));
          for (const id of event.choices[0].token_ids ?? []) tokens[i].push({ id, version: event.policy_version });
          // Enough of the new weights' tokens: hang up (the engine aborts the rest).
          if (tokens[i].filter((t) => t.version > version).length >= 4) break;
        }
      } catch (err) {
        if (!control[i].signal.aborted) throw err;
      }
    });
    while (tokens.some((t) => t.length < 3)) await new Promise((resolve) => setTimeout(resolve, 10));
    const result = await update({ path: seed2, mode: "pause" });
    assert.equal(result.preempted, 2, "both streams were running when the weights changed");
    await Promise.all(readers);
    for (const [i, stream] of tokens.entries()) {
      const old = stream.filter((t) => t.version === version).map((t) => t.id);
      const renewed = stream.filter((t) => t.version === result.policy_version).map((t) => t.id);
      assert.equal(old.length + renewed.length, stream.length, "tokens name the old or the new version only");
      assert.deepEqual(stream.map((t) => t.version), [...old.map(() => version), ...renewed.map(() => result.policy_version)]);
      assert.ok(renewed.length >= 4);
      // What the new weights generate after the prompt and the old weights' tokens: a fresh server on seed 2 agrees.
      assert.deepEqual(renewed, await engineGreedy(fresh2, [...prompts[i], ...old], renewed.length), `stream ${i}`);
    }
    await engineSettles(served, 10_000);
  });

  test("clients that hang up mid-stream or mid-request free everything they held", SLOW, async () => {
    const hangUps: Promise<void>[] = [];
    for (let i = 0; i < 24; i++) {
      hangUps.push((async () => {
        const control = new AbortController();
        const res = await post(base, "/v1/chat/completions", {
          messages: [{ role: "user", content: `tell me a long story, number ${i}` }],
          max_tokens: 1500,
          ignore_eos: true,
          n: i % 4 === 0 ? 2 : 1,
          stream: true,
        }, control.signal);
        let chunks = 0;
        try {
          for await (const _ of sseEvents(res)) if (++chunks >= 2 + (i % 3)) break;
        } finally {
          control.abort();
        }
      })());
    }
    for (let i = 0; i < 8; i++) {
      hangUps.push((async () => {
        const control = new AbortController();
        const pending = post(base, "/v1/completions", { prompt: [7000 + i, 7001], max_tokens: 1500, ignore_eos: true }, control.signal);
        await new Promise((resolve) => setTimeout(resolve, 100 + 20 * i));
        control.abort();
        await pending.then((r) => r.body?.cancel(), () => {});
      })());
    }
    await Promise.all(hangUps);
    // 40 sequences of 1500 tokens would take minutes: settling this fast means they were aborted.
    await engineSettles(served, 15_000);
    const text = await metricsText(base);
    assert.equal(sampleOf(text, `vllm:num_requests_running{model_name="${MODEL}"}`), 0);
    assert.ok(sampleOf(text, `vllm:request_success_total{model_name="${MODEL}",finished_reason="abort"}`) >= 40);
    // And the server still serves.
    const res = await post(base, "/v1/completions", { prompt: [1, 2, 3], max_tokens: 3 });
    assert.equal(res.status, 200);
    assert.equal((await res.json()).choices[0].finish_reason, "length");
  });

  test("/metrics reports the policy version, weight updates and latencies", SLOW, async () => {
    const text = await metricsText(base);
    const m = `model_name="${MODEL}"`;
    assert.equal(sampleOf(text, `gym_edge:policy_version{${m}}`), served.engine.policyVersion);
    assert.equal(sampleOf(text, `gym_edge:weight_updates_total{${m},mode="pause",result="ok"}`), 1);
    assert.equal(sampleOf(text, `gym_edge:weight_updates_total{${m},mode="finish",result="ok"}`), 2);
    assert.ok(sampleOf(text, `vllm:time_to_first_token_seconds_count{${m}}`) > 64);
    assert.ok(sampleOf(text, `vllm:generation_tokens_total{${m}}`) > 0);
    assert.ok(sampleOf(text, `gym_edge:http_requests_total{${m},method="POST",route="/v1/completions",status="200"}`) > 0);
    const version = await (await fetch(`${base}/version`)).json();
    assert.equal(version.policy_version, served.engine.policyVersion);
  });

  test("shutdown with too little time: requests in flight end with a retriable error, then the port closes", SLOW, async () => {
    const streams = [0, 1, 2].map(async (i) => {
      const outcome = await outcomeOf(base, "/v1/completions", { prompt: [8000 + i], max_tokens: 1500, ignore_eos: true, stream: i !== 1 });
      assert.equal(outcome.kind, "retriable");
      assert.match((outcome as { message: string }).message, /shut down/);
    });
    while (served.engine.stats().running < 3) await new Promise((resolve) => setTimeout(resolve, 10));
    closed = true;
    await server.shutdown(300);
    await Promise.all(streams);
    await assert.rejects(fetch(`${base}/health`));
  });
});

describe("a server with a bounded queue", () => {
  let server: StartedServer;
  let served: ServedModel;
  let base: string;
  let closed = false;

  before(async () => {
    server = await startServer(configOf({ maxNumSeqs: 2, maxQueue: 4 }), silentLogger);
    served = await server.ready;
    base = `http://127.0.0.1:${server.port}`;
  });
  after(async () => {
    if (!closed) await server.close();
  });

  test("beyond --max-queue requests get 503 with Retry-After; every accepted one completes", SLOW, async () => {
    const results = await Promise.all(Array.from({ length: 24 }, async (_, i) => {
      const res = await post(base, "/v1/completions", { prompt: [100 + i, 200], max_tokens: 40, ignore_eos: true });
      return { status: res.status, retryAfter: res.headers.get("retry-after"), body: await res.json() };
    }));
    const refused = results.filter((r) => r.status === 503);
    const accepted = results.filter((r) => r.status === 200);
    assert.equal(refused.length + accepted.length, 24, JSON.stringify(results.map((r) => r.status)));
    assert.ok(refused.length >= 1, "24 at once overflow 2 running + 4 waiting");
    assert.ok(accepted.length >= 4, "at least a full queue is taken");
    for (const r of refused) {
      assert.equal(r.retryAfter, "1");
      assert.match(r.body.error.message, /queue is full/);
    }
    for (const r of accepted) {
      assert.equal(r.body.choices[0].finish_reason, "length");
      assert.equal(r.body.usage.completion_tokens, 40);
    }
    await engineSettles(served, 10_000);
    const text = await metricsText(base);
    assert.equal(sampleOf(text, `gym_edge:requests_rejected_total{model_name="${MODEL}",reason="queue_full"}`), refused.length);
  });

  test("the openai client retries the 503s on its own until every request is served", SLOW, async () => {
    const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 20 });
    const outs = await Promise.all(Array.from({ length: 10 }, (_, i) =>
      client.completions.create({ model: MODEL, prompt: `retry ${i}`, max_tokens: 4 })
    ));
    for (const out of outs) assert.equal(out.usage?.completion_tokens, 4);
  });

  test("shutdown with time enough: requests in flight complete, new ones are refused, then the port closes", SLOW, async () => {
    const streams = [0, 1, 2].map((i) =>
      outcomeOf(base, "/v1/chat/completions", {
        messages: [{ role: "user", content: `last words ${i}` }],
        max_tokens: 24,
        ignore_eos: true,
        stream: i !== 0,
      })
    );
    while (served.engine.stats().running + served.engine.stats().waiting < 3) await new Promise((resolve) => setTimeout(resolve, 10));
    closed = true;
    const stopping = server.shutdown(60_000);
    const late = await fetch(`${base}/v1/models`).then((r) => r.status, () => "refused");
    assert.ok(late === 503 || late === "refused", String(late));
    for (const outcome of await Promise.all(streams)) assert.equal(outcome.kind, "complete");
    await stopping;
    await assert.rejects(fetch(`${base}/health`));
  });
});
