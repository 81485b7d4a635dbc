/**
 * No message vanishes from the prompt: a role the chat template does not know (it would drop the message) and a
 * message without content are 400s naming the field, as OpenAI answers; `developer` renders as `system`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { TokenizeResponse } from "../../src/api/schemas.ts";
import { errorOf, postJson, servedTinyApp } from "./app-fixture.ts";

const SLOW = { timeout: 120_000 };
const { served, servedApp } = await servedTinyApp();
const app = servedApp();

const earlier = [{ role: "user", content: "Name a colour." }, { role: "assistant", content: "Blue." }];

async function tokenize(messages: unknown[]): Promise<number[]> {
  const res = await app.request("/tokenize", postJson({ messages }));
  assert.equal(res.status, 200, await res.clone().text());
  return TokenizeResponse.parse(await res.json()).tokens;
}

test("an unknown role is a 400 naming the message's role, on chat completions and /tokenize alike", SLOW, async () => {
  for (const [role, shown] of [["wizard", '"wizard"'], ["", '""'], ["user\u200f", '"user\\u200f"'], ["function", '"function"']]) {
    const messages = [...earlier, { role, content: "and another?" }];
    for (const route of ["/v1/chat/completions", "/tokenize"]) {
      const err = await errorOf(await app.request(route, postJson({ messages, max_tokens: 1 })), 400);
      assert.equal(err.type, "invalid_request_error");
      assert.equal(err.param, "messages[2].role", `${route} ${shown}`);
      assert.ok(err.message.includes(`unknown role ${shown}`), err.message);
      assert.match(err.message, /one of system, developer, user, assistant, tool/);
    }
  }
  const missing = await errorOf(await app.request("/tokenize", postJson({ messages: [{ content: "hi" }] })), 400);
  assert.equal(missing.param, "messages[0].role");
});

test("a Responses input message with an unknown role is a 400 naming the item's role", SLOW, async () => {
  const input = [{ role: "user", content: "hi" }, { type: "message", role: "user\u200f", content: "there" }];
  const err = await errorOf(await app.request("/v1/responses", postJson({ input, max_output_tokens: 1 })), 400);
  assert.equal(err.param, "input[1].role");
  assert.ok(err.message.includes('unknown role "user\\u200f"'), err.message);
});

test("a developer message renders as a system message, in chat completions' prompt too", SLOW, async () => {
  const asSystem = await tokenize([{ role: "system", content: "Answer in French." }, ...earlier]);
  assert.deepEqual(await tokenize([{ role: "developer", content: "Answer in French." }, ...earlier]), asSystem);
  const res = await app.request("/v1/chat/completions", postJson({
    messages: [{ role: "developer", content: "Answer in French." }, ...earlier],
    max_tokens: 1,
    return_token_ids: true,
  }));
  assert.equal(res.status, 200, await res.clone().text());
  const prompt: number[] = (await res.json()).prompt_token_ids;
  assert.deepEqual(prompt, asSystem);
  assert.match(served.tokenizer.decode(prompt), /^<\|im_start\|>system\nAnswer in French\.<\|im_end\|>/);
});

test("a message other than the assistant's without content is a 400 naming its content", SLOW, async () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ role: "user", content: null }, "user"],
    [{ role: "user" }, "user"],
    [{ role: "system", content: null }, "system"],
    [{ role: "developer" }, "developer"],
    [{ role: "tool", tool_call_id: "c" }, "tool"],
  ];
  for (const [message, role] of cases) {
    const body = { messages: [...earlier, message], max_tokens: 1 };
    const err = await errorOf(await app.request("/v1/chat/completions", postJson(body)), 400);
    assert.equal(err.param, "messages[2].content", JSON.stringify(message));
    assert.match(err.message, new RegExp(`a ${role} message needs content`));
  }
});

test("an assistant turn of tool calls alone and the tool's answer still render", SLOW, async () => {
  const messages = [
    { role: "user", content: "add 1 and 2" },
    { role: "assistant", content: null, tool_calls: [{ id: "c", type: "function", function: { name: "add", arguments: '{"a":1,"b":2}' } }] },
    { role: "tool", tool_call_id: "c", content: "three" },
  ];
  const text = served.tokenizer.decode(await tokenize(messages));
  assert.ok(text.includes('{"name": "add", "arguments": {"a": 1, "b": 2}}'), text);
  assert.ok(text.includes("<tool_response>\nthree\n</tool_response>"), text);
  const res = await app.request("/v1/chat/completions", postJson({ messages, max_tokens: 1 }));
  assert.equal(res.status, 200, await res.clone().text());
});
