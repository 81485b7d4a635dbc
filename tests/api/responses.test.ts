import { test } from "node:test";
import assert from "node:assert/strict";
import { TokenNames } from "../../src/api/protocol.ts";
import { ResponseItems } from "../../src/api/response-items.ts";
import { ResponsesRequest, TokenizeResponse } from "../../src/api/schemas.ts";
import { TokenTexts } from "../../src/chat/detokenize.ts";
import { AssistantOutput, toolCalling } from "../../src/chat/tools/parser.ts";
import { errorOf, postJson, servedTinyApp } from "./app-fixture.ts";

const { served, engine, servedApp } = await servedTinyApp();

const app = servedApp();
const EOS = 151645;
const SLOW = { timeout: 120_000 };

// deno-lint-ignore no-explicit-any
type Json = any;

async function respond(body: Record<string, unknown>): Promise<Json> {
  const res = await app.request("/v1/responses", postJson(body));
  assert.equal(res.status, 200, await res.clone().text());
  return await res.json();
}

async function tokenize(body: Record<string, unknown>): Promise<number[]> {
  return TokenizeResponse.parse(await (await app.request("/tokenize", postJson(body))).json()).tokens;
}

const TOOLS = [{ type: "function", name: "get_weather", description: "Weather of a city", parameters: { type: "object", properties: { city: { type: "string" } } } }];
const CHAT_TOOLS = [{ type: "function", function: { name: "get_weather", description: "Weather of a city", parameters: TOOLS[0].parameters } }];

test("a string input answers a response with one message item carrying the RL token fields", SLOW, async () => {
  const out = await respond({ input: "Say hi", instructions: "Be brief.", max_output_tokens: 4, seed: 1 });
  assert.match(out.id, /^resp_[0-9a-f]{32}$/);
  assert.equal(out.object, "response");
  assert.equal(out.status, "incomplete");
  assert.deepEqual(out.incomplete_details, { reason: "max_output_tokens" });
  assert.equal(out.output.length, 1);
  const [message] = out.output;
  assert.equal(message.type, "message");
  assert.equal(message.role, "assistant");
  assert.equal(message.content[0].type, "output_text");
  assert.deepEqual(message.prompt_token_ids, await tokenize({ messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Say hi" }] }));
  assert.equal(message.generation_token_ids.length, 4);
  assert.equal(message.generation_log_probs.length, 4);
  assert.deepEqual(out.usage, {
    input_tokens: message.prompt_token_ids.length,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: 4,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: message.prompt_token_ids.length + 4,
  });
  assert.equal(out.policy_version, engine.policyVersion);
});

test("usage counts the prompt tokens the prefix cache held", SLOW, async () => {
  const input = "Tell me about the prefix cache in a few words, please, as briefly as you can manage it.";
  const first = await respond({ input, max_output_tokens: 1 });
  const second = await respond({ input, max_output_tokens: 1 });
  const length = second.usage.input_tokens;
  assert.ok(first.usage.input_tokens_details.cached_tokens < length);
  // Whole blocks of 16, all but the prompt's last token at most (that one is always computed).
  const cached = second.usage.input_tokens_details.cached_tokens;
  assert.ok(cached > 0);
  assert.equal(cached, Math.floor((length - 1) / 16) * 16, `${cached} of ${length} prompt tokens cached`);
});

test("a generation that ends with EOS completes; top_logprobs fills the output text's logprobs", SLOW, async () => {
  const out = await respond({ input: "Say hi", max_output_tokens: 20, min_tokens: 2, logit_bias: { [EOS]: 100 }, top_logprobs: 2 });
  assert.equal(out.status, "completed");
  assert.equal(out.incomplete_details, null);
  const [message] = out.output;
  assert.equal(message.status, "completed");
  assert.equal(message.generation_token_ids.at(-1), EOS);
  assert.equal(message.content[0].logprobs.length, 3);
  assert.equal(message.content[0].logprobs[0].top_logprobs.length, 2);
});

test("input items (messages, function calls and their outputs) render as the equivalent chat", SLOW, async () => {
  const input = [
    { role: "user", content: "Weather in Paris?" },
    { type: "function_call", call_id: "call_1", name: "get_weather", arguments: '{"city":"Paris"}' },
    { type: "function_call_output", call_id: "call_1", output: "sunny" },
  ];
  const out = await respond({ input, tools: TOOLS, max_output_tokens: 2 });
  const chat = [
    { role: "user", content: "Weather in Paris?" },
    { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } }] },
    { role: "tool", tool_call_id: "call_1", content: "sunny" },
  ];
  assert.deepEqual(out.output.at(-1).prompt_token_ids, await tokenize({ messages: chat, tools: CHAT_TOOLS }));
  assert.deepEqual(out.tools, TOOLS);
});

test("sending the output items back continues on policy: the next prompt starts with prompt + generation", SLOW, async () => {
  for (const ending of [{}, { min_tokens: 3, logit_bias: { [EOS]: 100 } }]) {
    const first = await respond({ input: [{ role: "user", content: "Hi" }], max_output_tokens: 6, seed: 3, ...ending });
    const last = first.output.at(-1);
    const input = [{ role: "user", content: "Hi" }, ...first.output, { role: "user", content: "And then?" }];
    const second = await respond({ input, max_output_tokens: 2 });
    const prompt = second.output.at(-1).prompt_token_ids;
    const prefix = [...last.prompt_token_ids, ...last.generation_token_ids];
    assert.deepEqual(prompt.slice(0, prefix.length), prefix);
    const asChat = [
      { role: "user", content: "Hi" },
      { role: "assistant", content: first.output[0].content[0].text, prompt_token_ids: last.prompt_token_ids, generation_token_ids: last.generation_token_ids },
      { role: "user", content: "And then?" },
    ];
    assert.deepEqual(prompt, await tokenize({ messages: asChat }), "/tokenize on the same conversation gives the same ids");
  }
});

test("streaming emits the Responses events in order, and the final response holds the streamed output", SLOW, async () => {
  const res = await app.request("/v1/responses", postJson({ input: "Stream", max_output_tokens: 3, seed: 4, stream: true }));
  assert.equal(res.status, 200);
  const events = (await res.text()).split("\n\n").filter((e) => e !== "").map((block) => {
    const [eventLine, dataLine] = block.split("\n");
    const data = JSON.parse(dataLine.replace(/^data: /, ""));
    assert.equal(eventLine, `event: ${data.type}`);
    return data;
  });
  const types = events.map((e) => e.type);
  assert.deepEqual(types.slice(0, 4), ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]);
  assert.deepEqual(types.slice(-4), [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.incomplete",
  ]);
  assert.deepEqual(events.map((e) => e.sequence_number), events.map((_, i) => i));
  assert.deepEqual(events[2].item.content, [], "an item opens empty");
  const text = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
  const final = events.at(-1).response;
  assert.equal(final.output[0].content[0].text, text);
  assert.equal(final.output[0].generation_token_ids.length, 3);
  assert.deepEqual(events.at(-2).item, final.output[0]);
});

test("Responses errors are 400s naming the field", SLOW, async () => {
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ input: "x", previous_response_id: "resp_1" }, "previous_response_id", /not supported/],
    [{ input: "x", text: { format: { type: "json_schema" } } }, "text.format.schema", /JSON Schema/],
    [{ input: [{ type: "web_search_call", id: "x" }] }, "input[0].type", /./],
    [{ input: "x ".repeat(600) }, "input", /context length/],
    [{ input: "x", tool_choice: { type: "function", name: "nope" }, tools: TOOLS }, "tool_choice", /nope/],
    [{ input: [] }, "input", /./],
  ];
  for (const [body, param, message] of cases) {
    const err = await errorOf(await app.request("/v1/responses", postJson(body)), 400);
    assert.equal(err.param, param, JSON.stringify(body));
    assert.match(err.message, message, JSON.stringify(body));
  }
});

test("with a reasoning parser the <think> text is a reasoning item, which goes back in as the turn's reasoning", SLOW, async () => {
  const thinking = servedApp({ reasoningParser: "qwen3" });
  const res = await thinking.request("/v1/responses", postJson({ input: "Think", max_output_tokens: 3, logit_bias: { 151667: 100 } }));
  const out = await res.json();
  assert.deepEqual(out.output.map((item: Json) => item.type), ["reasoning"]);
  assert.deepEqual(out.output[0].content, [{ type: "reasoning_text", text: "<think><think>" }]);
  const next = await (await thinking.request("/v1/responses", postJson({
    input: [{ role: "user", content: "Think" }, ...out.output, { role: "user", content: "Now answer" }],
    max_output_tokens: 1,
  }))).json();
  const prefix = [...out.output[0].prompt_token_ids, ...out.output[0].generation_token_ids];
  assert.deepEqual(next.output.at(-1).prompt_token_ids.slice(0, prefix.length), prefix);
});

test("streamed function calls open an item, stream their arguments and close with the token fields", () => {
  const tokenizer = served.tokenizer;
  const text = 'Checking.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>';
  const ids = tokenizer.encode(text, { addSpecialTokens: false });
  const tokens = ids.map((tokenId, index) => ({ index, tokenId, logprob: -1, policyVersion: 0 }));
  const items = new ResponseItems({
    id: "resp_test",
    createdAt: 0,
    model: "m",
    request: ResponsesRequest.parse({ input: "x" }),
    promptIds: [1, 2],
    names: new TokenNames(new TokenTexts(tokenizer), false),
    topLogprobs: null,
    version: 0,
    cachedTokens: () => 0,
    sampling: { temperature: 1, topP: 1 },
  });
  const output = new AssistantOutput(null, toolCalling("hermes", [{ function: { name: "get_weather" } }], "auto", null));
  const raw = [...items.start()];
  for (const id of ids) raw.push(...items.delta(output.push(tokenizer.decode([id]))));
  raw.push(...items.delta(output.flush()));
  raw.push(...items.finish({ index: 0, tokens, text, finishReason: "stop", stopReason: null }));
  const events = raw.map((e) => JSON.parse(e.split("\n")[1].slice(6)));
  const types = events.map((e) => e.type).filter((t) => !t.endsWith(".delta"));
  assert.deepEqual(types, [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.output_item.added",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
  ]);
  const final = events.at(-1).response;
  assert.equal(final.output[0].content[0].text, "Checking.");
  assert.equal(final.output[1].type, "function_call");
  assert.equal(final.output[1].name, "get_weather");
  assert.equal(final.output[1].arguments, '{"city":"Oslo"}');
  assert.match(final.output[1].call_id, /^chatcmpl-tool-/);
  assert.deepEqual(final.output[1].generation_token_ids, ids);
  assert.equal(final.output[0].generation_token_ids, undefined, "only the last item carries the token fields");
  assert.equal(events.filter((e) => e.type === "response.function_call_arguments.delta").map((e) => e.delta).join(""), '{"city":"Oslo"}');
});

test("a response reports the sampling it ran: a pinned server's temperature and top_p, not the request's defaults", SLOW, async () => {
  const pinned = servedApp({ requireTemperature: 0.5, requireTopP: 0.9 });
  const res = await pinned.request("/v1/responses", postJson({ input: "Say hi", max_output_tokens: 2 }));
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.temperature, 0.5);
  assert.equal(body.top_p, 0.9);
  const plain = await respond({ input: "Say hi", max_output_tokens: 2, temperature: 0 });
  assert.equal(plain.temperature, 0);
  assert.equal(plain.top_p, 1);
});
