import { test } from "node:test";
import assert from "node:assert/strict";
import { reasoningParser, ReasoningStream, splitReasoning, UnknownReasoningParserError } from "../../src/chat/reasoning.ts";

/** Streams `text` in pieces of `size` and joins what comes out. */
function streamed(parser: "qwen3" | "deepseek_r1", text: string, size: number) {
  const stream = new ReasoningStream(parser);
  let reasoning = "";
  let content = "";
  for (let i = 0; i <= text.length; i += size) {
    const d = i < text.length ? stream.push(text.slice(i, i + size)) : stream.flush();
    reasoning += d.reasoning;
    content += d.content;
  }
  const rest = stream.flush();
  return { reasoning: reasoning + rest.reasoning, content: content + rest.content };
}

test("qwen3: a leading <think> block is reasoning, the rest content", () => {
  const text = "<think>\nLet me think.\n</think>\n\nThe answer is 4.";
  assert.deepEqual(splitReasoning("qwen3", text), { reasoning: "\nLet me think.\n", content: "\n\nThe answer is 4." });
});

test("qwen3: output without <think> is all content (thinking disabled)", () => {
  assert.deepEqual(splitReasoning("qwen3", "Hi </think> there"), { reasoning: null, content: "Hi </think> there" });
  assert.deepEqual(splitReasoning("qwen3", ""), { reasoning: null, content: null });
});

test("qwen3: thinking cut off before </think> is all reasoning", () => {
  assert.deepEqual(splitReasoning("qwen3", "<think>still going"), { reasoning: "still going", content: null });
});

test("deepseek_r1: output is reasoning until </think>, with or without the opening tag", () => {
  assert.deepEqual(splitReasoning("deepseek_r1", "plan</think>done"), { reasoning: "plan", content: "done" });
  assert.deepEqual(splitReasoning("deepseek_r1", "<think>plan</think>"), { reasoning: "plan", content: null });
  assert.deepEqual(splitReasoning("deepseek_r1", "no end"), { reasoning: "no end", content: null });
});

test("streaming in any piece size splits the text exactly as the whole-text parse does", () => {
  const cases: ["qwen3" | "deepseek_r1", string][] = [
    ["qwen3", "<think>\nhmm </thin k> </think>\n\nok <think> stays"],
    ["qwen3", "  plain <think>text"],
    ["qwen3", "<thi"],
    ["deepseek_r1", "a</think>b"],
    ["deepseek_r1", "<think>x"],
    ["deepseek_r1", "<th"],
  ];
  for (const [parser, text] of cases) {
    const whole = splitReasoning(parser, text);
    for (const size of [1, 2, 3, 5, 100]) {
      const got = streamed(parser, text, size);
      assert.equal(got.reasoning, whole.reasoning ?? "", `${parser} ${JSON.stringify(text)} pieces of ${size}`);
      assert.equal(got.content, whole.content ?? "", `${parser} ${JSON.stringify(text)} pieces of ${size}`);
    }
  }
});

test("parser names are checked", () => {
  assert.equal(reasoningParser("qwen3"), "qwen3");
  assert.throws(() => reasoningParser("granite"), UnknownReasoningParserError);
});
