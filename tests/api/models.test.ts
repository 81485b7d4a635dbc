import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { ModelCard, ModelList } from "../../src/api/schemas.ts";
import { errorOf, MAX_MODEL_LEN, MODEL, postJson, testApp } from "./app-fixture.ts";

test("GET /v1/models lists the served model in vLLM's shape", async () => {
  const res = await testApp({ modelRoot: "/models/tiny" }).request("/v1/models");
  assert.equal(res.status, 200);
  const body = ModelList.parse(await res.json());
  assert.equal(body.data.length, 1);
  const [card] = body.data;
  assert.deepEqual({ ...card, created: 0 }, {
    id: MODEL,
    object: "model",
    created: 0,
    owned_by: "gym-edge",
    root: "/models/tiny",
    parent: null,
    max_model_len: MAX_MODEL_LEN,
    permission: [],
  });
  assert.ok(Math.abs(card.created - Date.now() / 1000) < 600);
});

test("GET /v1/models/{model} returns the card for the served name (slashes included) and 404 for another", async () => {
  const app = testApp();
  const res = await app.request(`/v1/models/${MODEL}`);
  assert.equal(res.status, 200);
  assert.equal(ModelCard.parse(await res.json()).root, MODEL);
  const err = await errorOf(await app.request("/v1/models/gpt-4o"), 404);
  assert.match((await errorOf(await app.request("/v1/models/100%25"), 404)).message, /100%/);
  assert.equal(err.code, "model_not_found");
  assert.equal(err.param, "model");
  assert.match(err.message, /gpt-4o/);
});

test("the official OpenAI client lists the model and sees a wrong name as NotFoundError", async () => {
  const app = testApp({ apiKey: "sk-test" });
  const client = new OpenAI({
    baseURL: "http://gym-edge.test/v1",
    apiKey: "sk-test",
    maxRetries: 0,
    fetch: async (url: string | URL | Request, init?: RequestInit) => await app.fetch(new Request(url, init)),
  });
  const models = [];
  for await (const model of client.models.list()) models.push(model.id);
  assert.deepEqual(models, [MODEL]);
  assert.equal((await client.models.retrieve(MODEL)).id, MODEL);
  await assert.rejects(client.models.retrieve("other"), (e: unknown) => {
    return e instanceof OpenAI.NotFoundError && e.code === "model_not_found";
  });
});

test("several served names: /v1/models lists a card for each, as vLLM; requests may name any of them or the model path", async () => {
  const app = testApp({ servedModelNames: [MODEL, "policy"], modelRoot: "/models/tiny" });
  const body = ModelList.parse(await (await app.request("/v1/models")).json());
  assert.deepEqual(body.data.map((card) => [card.id, card.root]), [[MODEL, "/models/tiny"], ["policy", "/models/tiny"]]);
  assert.equal(ModelCard.parse(await (await app.request("/v1/models/policy")).json()).id, "policy");
  // The model path is no card of its own; it answers with the first name's.
  assert.equal(ModelCard.parse(await (await app.request(`/v1/models/${encodeURIComponent("/models/tiny")}`)).json()).id, MODEL);
  for (const model of [MODEL, "policy", "/models/tiny", undefined]) {
    const res = await app.request("/tokenize", postJson({ model, prompt: "Hello" }));
    assert.equal(res.status, 200, `model ${model}`);
  }
  const err = await errorOf(await app.request("/tokenize", postJson({ model: "Qwen/Qwen3-0.6B", prompt: "Hello" })), 404);
  assert.equal(err.code, "model_not_found");
});
