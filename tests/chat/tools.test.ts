import { test } from "node:test";
import assert from "node:assert/strict";
import type { ToolCallDelta } from "../../src/chat/tools/format.ts";
import {
  AssistantOutput,
  toolCallParser,
  toolCalling,
  ToolChoiceError,
  UnknownToolCallParserError,
} from "../../src/chat/tools/parser.ts";

const hermes = toolCallParser("hermes");
const llama3 = toolCallParser("llama3_json");

/** Streams `text` through a parser in pieces of `size` characters and gathers what comes out. */
function streamed(name: string, text: string, size: number): ToolCallDelta {
  const stream = toolCallParser(name).stream();
  const out: ToolCallDelta = { content: "", calls: [] };
  const add = (d: ToolCallDelta) => {
    out.content += d.content;
    out.calls.push(...d.calls);
  };
  for (let i = 0; i < text.length; i += size) add(stream.push(text.slice(i, i + size)));
  add(stream.flush());
  return out;
}

const TWO_CALLS = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>\n' +
  '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": "x}<"}}\n</tool_call>';

test("hermes: calls become name + JSON-string arguments; the text before them is the content", () => {
  assert.deepEqual(hermes.extract(TWO_CALLS), {
    content: "Let me look.\n",
    calls: [
      { name: "get_weather", arguments: '{"city":"Paris","days":2}' },
      { name: "add", arguments: '{"a":1,"b":"x}<"}' },
    ],
  });
});

test("hermes: a final call cut off before </tool_call> still counts; no content is null", () => {
  const text = '<tool_call>\n{"name": "f", "arguments": {}}\n';
  assert.deepEqual(hermes.extract(text), { content: null, calls: [{ name: "f", arguments: "{}" }] });
});

test("hermes: malformed calls leave the whole text as content, never an error", () => {
  for (const text of ["<tool_call>{not json}</tool_call>", '<tool_call>{"arguments": {}}</tool_call>', "<tool_call>", "plain text"]) {
    assert.deepEqual(hermes.extract(text), { content: text, calls: [] });
  }
});

test("hermes: streaming in any piece size gives the same calls and content as the whole-text parse", () => {
  for (const size of [1, 2, 3, 7, 1000]) {
    const out = streamed("hermes", TWO_CALLS, size);
    assert.deepEqual(out, { content: "Let me look.\n", calls: hermes.extract(TWO_CALLS).calls }, `pieces of ${size}`);
  }
});

test("hermes: streaming holds back only what could open a call", () => {
  const stream = hermes.stream();
  assert.deepEqual(stream.push("a <tool"), { content: "a ", calls: [] });
  assert.deepEqual(stream.push("box>"), { content: "<toolbox>", calls: [] });
  assert.deepEqual(stream.push("<tool_call>{bad"), { content: "", calls: [] });
  assert.deepEqual(stream.flush(), { content: "<tool_call>{bad", calls: [] }, "a broken call streams out as content");
});

test("llama3_json: JSON objects separated by ';' (after an optional python tag) are calls", () => {
  const text = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "arguments": {"y": "}"}}';
  const expected = [{ name: "a", arguments: '{"x":1}' }, { name: "b", arguments: '{"y":"}"}' }];
  assert.deepEqual(llama3.extract(text), { content: null, calls: expected });
  for (const size of [1, 5, 1000]) assert.deepEqual(streamed("llama3_json", text, size), { content: "", calls: expected });
});

test("llama3_json: text that is not a call, or does not parse, stays content", () => {
  for (const text of ["Hello {there}", '{"name": "a", "parameters": {', '{"nome": 1}', "  "]) {
    assert.deepEqual(llama3.extract(text), { content: text, calls: [] });
    assert.deepEqual(streamed("llama3_json", text, 2), { content: text, calls: [] });
  }
});

test("parsers are chosen by name; an unknown name is a clear error", () => {
  assert.equal(toolCallParser("hermes").name, "hermes");
  assert.equal(toolCallParser("llama3_json").name, "llama3_json");
  assert.throws(() => toolCallParser("mistral"), UnknownToolCallParserError);
});

const TOOLS = [{ function: { name: "get_weather" } }, { function: { name: "add" } }];

test("tool_choice: no tools or 'none' parses nothing; 'required' or a named function needs the tools", () => {
  assert.equal(toolCalling("hermes", null, "auto", null), null);
  assert.equal(toolCalling("hermes", TOOLS, "none", null), null);
  assert.equal(toolCalling(null, TOOLS, "auto", null), null, "no parser configured");
  assert.equal(toolCalling("hermes", TOOLS, undefined, null)?.parser.name, "hermes");
  assert.throws(() => toolCalling("hermes", [], "required", null), ToolChoiceError);
  assert.throws(() => toolCalling("hermes", TOOLS, { function: { name: "nope" } }, null), /not among the request's tools/);
});

test("a named tool_choice keeps only that function's calls; parallel_tool_calls false keeps the first", () => {
  const named = new AssistantOutput(null, toolCalling("hermes", TOOLS, { function: { name: "add" } }, null));
  assert.deepEqual(named.parse(TWO_CALLS).calls.map((c) => c.function.name), ["add"]);
  const single = new AssistantOutput(null, toolCalling("hermes", TOOLS, "auto", false));
  assert.deepEqual(single.parse(TWO_CALLS).calls.map((c) => c.function.name), ["get_weather"]);
});

test("assistant output: reasoning first, then content and calls, each call with a chatcmpl-tool- id", () => {
  const text = "<think>\nweather?\n</think>\n\n" + TWO_CALLS;
  const whole = new AssistantOutput("qwen3", toolCalling("hermes", TOOLS, "auto", null)).parse(text);
  assert.equal(whole.reasoning, "\nweather?\n");
  assert.equal(whole.content, "\n\nLet me look.\n");
  assert.equal(whole.calls.length, 2);
  for (const call of whole.calls) {
    assert.match(call.id, /^chatcmpl-tool-[0-9a-f]{32}$/);
    assert.equal(call.type, "function");
  }
  const stream = new AssistantOutput("qwen3", toolCalling("hermes", TOOLS, "auto", null));
  const parts = [...text].map((ch) => stream.push(ch));
  parts.push(stream.flush());
  assert.equal(parts.map((p) => p.reasoning).join(""), whole.reasoning);
  assert.equal(parts.map((p) => p.content).join(""), whole.content);
  assert.deepEqual(parts.flatMap((p) => p.calls).map((c) => c.function), whole.calls.map((c) => c.function));
  assert.equal(stream.calledTools, true);
});

test("assistant output without parsers is the text itself", () => {
  assert.deepEqual(new AssistantOutput(null, null).parse("<tool_call>{}</tool_call>"), {
    reasoning: null,
    content: "<tool_call>{}</tool_call>",
    calls: [],
  });
});
