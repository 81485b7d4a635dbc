/**
 * Structured outputs through a real server and the official openai client: the tiny model has random weights and
 * never writes JSON, a regex's match or a tool call by chance, so every valid output below is the grammar's work.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { Ajv } from "ajv";
import addFormats from "ajv-formats";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { startServer } from "../../src/server.ts";
import { HermesToolParser } from "../../src/chat/tools/hermes.ts";
import { testCacheDir } from "../support/served.ts";

const server = await startServer(ServerConfig.parse({ port: 0, device: "cpu", cacheDir: testCacheDir() }), silentLogger);
after(() => server.close());
await server.ready;
const base = `http://127.0.0.1:${server.port}`;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
const MODEL = "gym-edge/tiny";
const SLOW = { timeout: 300_000 };
const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: "user", content: "Describe a pet as JSON." }];

const ajv = new Ajv({ strict: false });
addFormats.default(ajv);

/** Nested objects, arrays, enums, required fields, string formats and numbers. */
const PET_SCHEMA = {
  type: "object",
  properties: {
    id: { type: "string", format: "uuid" },
    kind: { enum: ["cat", "dog", "fish"] },
    born: { type: "string", format: "date" },
    legs: { type: "integer", minimum: 0, maximum: 8 },
    weight: { type: "number" },
    vaccinated: { type: "boolean" },
    tags: { type: "array", items: { enum: ["cute", "loud", "old"] }, minItems: 1, maxItems: 3 },
    owner: {
      type: "object",
      properties: { name: { type: "string", pattern: "^[A-Z][a-z]{1,6}$" }, age: { type: "integer", minimum: 18, maximum: 99 } },
      required: ["name", "age"],
      additionalProperties: false,
    },
  },
  required: ["id", "kind", "legs", "tags", "owner"],
  additionalProperties: false,
};

async function post(path: string, body: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: res.status, json: await res.json() };
}

test("json_schema: 50 seeded samples at temperature 1 all parse and validate", SLOW, async () => {
  const validate = ajv.compile(PET_SCHEMA);
  let checked = 0;
  for (const seed of [1, 2, 3, 4, 5]) {
    const out = await client.chat.completions.create({
      model: MODEL,
      messages,
      n: 10,
      seed,
      temperature: 1,
      max_tokens: 200,
      response_format: { type: "json_schema", json_schema: { name: "pet", schema: PET_SCHEMA, strict: true } },
    });
    for (const choice of out.choices) {
      assert.equal(choice.finish_reason, "stop", `seed ${seed} choice ${choice.index}: ${choice.message.content}`);
      const value = JSON.parse(choice.message.content!);
      assert.ok(validate(value), `${choice.message.content}: ${JSON.stringify(validate.errors)}`);
      checked++;
    }
  }
  assert.equal(checked, 50);
});

test("json_object, streamed: the streamed text is one JSON object", SLOW, async () => {
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages,
    seed: 9,
    max_tokens: 64,
    response_format: { type: "json_object" },
    stream: true,
  });
  let text = "";
  let finish: string | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta.content ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  // A random model rarely closes an object it opened within 64 tokens: every prefix must still be one.
  assert.ok(text.startsWith("{"), text);
  if (finish === "stop") assert.equal(typeof JSON.parse(text), "object");
  else assert.equal(finish, "length");
});

test("structured_outputs regex, choice, grammar and structural_tag (and the guided_* aliases) on completions: every output matches", SLOW, async () => {
  const cases: [Record<string, unknown>, (text: string) => boolean][] = [
    [{ structured_outputs: { regex: "[A-Z][a-z]{2,5}-\\d{2,4}" } }, (t) => /^[A-Z][a-z]{2,5}-\d{2,4}$/.test(t)],
    [{ guided_regex: "(yes|no), [0-9]{3}" }, (t) => /^(yes|no), [0-9]{3}$/.test(t)],
    [{ structured_outputs: { choice: ["positive", "negative", "neutral"] } }, (t) => ["positive", "negative", "neutral"].includes(t)],
    [{ guided_choice: ["A \"quoted\" one", "B"] }, (t) => ["A \"quoted\" one", "B"].includes(t)],
    [
      { structured_outputs: { grammar: 'root ::= "(" expr ")"\nexpr ::= num | num ("+" | "*") expr\nnum ::= [1-9] [0-9]?' } },
      (t) => /^\(([1-9][0-9]?[+*])*[1-9][0-9]?\)$/.test(t),
    ],
    [{ guided_grammar: 'root ::= ("ab" | "cd")+ "!"' }, (t) => /^(ab|cd)+!$/.test(t)],
    [
      {
        structured_outputs: {
          structural_tag: {
            type: "structural_tag",
            format: { type: "sequence", elements: [{ type: "const_string", value: "Answer: " }, { type: "regex", pattern: "[0-9]{2}" }] },
          },
        },
      },
      (t) => /^Answer: [0-9]{2}$/.test(t),
    ],
  ];
  for (const [fields, matches] of cases) {
    const out = await client.completions.create({ model: MODEL, prompt: "Answer:", n: 5, seed: 4, temperature: 1, max_tokens: 40, ...fields });
    for (const choice of out.choices) {
      assert.equal(choice.finish_reason, "stop", `${JSON.stringify(fields)}: ${choice.text}`);
      assert.ok(matches(choice.text), `${JSON.stringify(fields)}: ${JSON.stringify(choice.text)}`);
    }
  }
});

const tools: OpenAI.ChatCompletionTool[] = [
  {
    type: "function",
    function: {
      name: "get_weather",
      parameters: { type: "object", properties: { unit: { enum: ["C", "F"] }, days: { type: "integer", minimum: 1, maximum: 7 } }, required: ["unit", "days"] },
    },
  },
  {
    type: "function",
    function: { name: "bash", parameters: { type: "object", properties: { cmd: { enum: ["ls", "pwd", "date"] } }, required: ["cmd"] } },
  },
];
const argsValid = (name: string, args: string) => {
  const tool = tools.find((t) => t.type === "function" && t.function.name === name) as OpenAI.ChatCompletionFunctionTool;
  return ajv.validate(tool.function.parameters!, JSON.parse(args));
};

test("tool_choice required and named: every answer is a hermes tool call with valid arguments, streamed and not", SLOW, async () => {
  const choices: [OpenAI.ChatCompletionToolChoiceOption, boolean][] = [
    ["required", false],
    [{ type: "function", function: { name: "bash" } }, true],
  ];
  for (const [toolChoice, parallel] of choices) {
    const out = await client.chat.completions.create({
      model: MODEL,
      messages,
      tools,
      tool_choice: toolChoice,
      parallel_tool_calls: parallel,
      n: 4,
      seed: 11,
      max_tokens: 120,
    });
    for (const choice of out.choices) {
      const calls = choice.message.tool_calls ?? [];
      assert.equal(choice.finish_reason, "tool_calls", JSON.stringify(choice.message));
      assert.equal(calls.length, 1, "a named function, or parallel_tool_calls false, is exactly one call");
      const call = calls[0] as OpenAI.ChatCompletionMessageFunctionToolCall;
      if (typeof toolChoice === "object") assert.equal(call.function.name, "bash");
      assert.ok(argsValid(call.function.name, call.function.arguments), call.function.arguments);
    }
    // The raw text is what the hermes parser reads.
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages,
      tools,
      tool_choice: toolChoice,
      parallel_tool_calls: parallel,
      seed: 12,
      max_tokens: 120,
      stream: true,
    });
    const streamed: { name?: string; args: string }[] = [];
    for await (const chunk of stream) {
      for (const delta of chunk.choices[0]?.delta.tool_calls ?? []) {
        streamed[delta.index] ??= { args: "" };
        if (delta.function?.name) streamed[delta.index].name = delta.function.name;
        streamed[delta.index].args += delta.function?.arguments ?? "";
      }
    }
    assert.ok(streamed.length >= 1);
    for (const call of streamed) assert.ok(argsValid(call.name!, call.args), call.args);
  }
});

test("Responses forces a named call; the text under tool_choice required is what the hermes parser reads", SLOW, async () => {
  const res = await post("/v1/responses", {
    model: MODEL,
    input: "Run something.",
    tools: tools.map((t) => ({ type: "function", name: (t as OpenAI.ChatCompletionFunctionTool).function.name, parameters: (t as OpenAI.ChatCompletionFunctionTool).function.parameters })),
    tool_choice: { type: "function", name: "get_weather" },
    max_output_tokens: 120,
    seed: 5,
  });
  assert.equal(res.status, 200, JSON.stringify(res.json));
  const calls = res.json.output.filter((item: { type: string }) => item.type === "function_call");
  assert.equal(calls.length, 1, JSON.stringify(res.json.output));
  assert.equal(calls[0].name, "get_weather");
  assert.ok(argsValid("get_weather", calls[0].arguments));
  // The hermes text itself, as a chat with return of the raw tokens would show it.
  const parser = new HermesToolParser();
  const raw = await client.chat.completions.create({
    model: MODEL,
    messages,
    tools,
    tool_choice: "required",
    // Parallel calls could run on past max_tokens, and a call cut short leaves the whole text as content.
    parallel_tool_calls: false,
    seed: 6,
    max_tokens: 120,
    logprobs: true,
  });
  const text = raw.choices[0].logprobs!.content!.map((c) => c.token).join("");
  assert.equal(raw.choices[0].finish_reason, "tool_calls", text);
  assert.deepEqual(parser.extract(text).calls.map((c) => c.name), raw.choices[0].message.tool_calls!.map((c) => (c as OpenAI.ChatCompletionMessageFunctionToolCall).function.name), text);
});

test("text.format json_schema on Responses validates", SLOW, async () => {
  const schema = { type: "object", properties: { ok: { type: "boolean" }, n: { type: "integer", minimum: 0, maximum: 9 } }, required: ["ok", "n"] };
  const res = await post("/v1/responses", {
    model: MODEL,
    input: "JSON please",
    text: { format: { type: "json_schema", name: "answer", schema } },
    max_output_tokens: 60,
    seed: 3,
  });
  assert.equal(res.status, 200, JSON.stringify(res.json));
  const message = res.json.output.find((item: { type: string }) => item.type === "message");
  assert.ok(ajv.validate(schema, JSON.parse(message.content[0].text)), message.content[0].text);
});

test("bad schemas, regexes and grammars are a 400 naming the field, not a 500 or a hang", SLOW, async () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ response_format: { type: "json_schema", json_schema: { name: "x", schema: "not an object" } } }, "response_format.json_schema.schema"],
    [{ response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "strin" } } } }, "response_format.json_schema.schema"],
    [{ response_format: { type: "json_schema", json_schema: { name: "x", schema: { $ref: "#/nowhere" } } } }, "response_format.json_schema.schema"],
    [{ response_format: { type: "yaml" } }, "response_format.type"],
    [{ structured_outputs: { regex: "([a-z" } }, "structured_outputs.regex"],
    [{ structured_outputs: { grammar: 'start ::= "a"' } }, "structured_outputs.grammar"],
    [{ structured_outputs: { choice: [] } }, "structured_outputs.choice"],
    [{ guided_json: "{not json" }, "guided_json"],
    [{ structured_outputs: { regex: "a", choice: ["a"] } }, "structured_outputs.choice"],
    [{ structured_outputs: { structural_tag: { type: "structural_tag" } } }, "structured_outputs.structural_tag"],
    [{ structured_outputs: { json: { type: "object" }, whitespace_pattern: " *" } }, "structured_outputs.whitespace_pattern"],
  ];
  for (const [fields, param] of cases) {
    const res = await post("/v1/chat/completions", { model: MODEL, messages, max_tokens: 4, ...fields });
    assert.equal(res.status, 400, `${JSON.stringify(fields)}: ${JSON.stringify(res.json)}`);
    assert.equal(res.json.error.type, "invalid_request_error");
    assert.equal(res.json.error.param, param, JSON.stringify(res.json));
  }
});

test("vLLM's older structural tag (structures and triggers) is taken", SLOW, async () => {
  const res = await post("/v1/chat/completions", {
    model: MODEL,
    messages,
    max_tokens: 4,
    structured_outputs: {
      structural_tag: { type: "structural_tag", structures: [{ begin: "<a>", schema: { type: "integer" }, end: "</a>" }], triggers: ["<a>"] },
    },
  });
  assert.equal(res.status, 200, JSON.stringify(res.json));
});

test("a grammar that cannot complete within max_tokens ends with finish_reason length", SLOW, async () => {
  const out = await client.completions.create({
    model: MODEL,
    prompt: "Count:",
    max_tokens: 5,
    seed: 1,
    // At least 40 characters of digits: more than 5 tokens of the digit-per-token Qwen3 vocabulary.
    ...{ structured_outputs: { regex: "[0-9]{40,50}" } },
  });
  assert.equal(out.choices[0].finish_reason, "length");
  assert.match(out.choices[0].text, /^[0-9]{1,5}$/);
});
