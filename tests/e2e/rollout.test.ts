/**
 * A NeMo-Gym-style agent rollout against a real server: many turns with tool calls, each request sending back
 * the previous assistant turn with its token fields. What a trainer checks: every turn's prompt_token_ids starts
 * with exactly the previous turn's prompt_token_ids + generation_token_ids (the model's own tokens, even where
 * its text would re-tokenize differently), and /tokenize on the same messages gives the same ids.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { ServerConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";

const server = await startServer(
  ServerConfig.parse({ port: 0, device: "cpu", cacheDir: testCacheDir(), maxModelLen: 2048 }),
  silentLogger,
);
after(() => server.close());
const served = await server.ready;
const base = `http://127.0.0.1:${server.port}`;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
const MODEL = "gym-edge/tiny";
const EOS = 151645;
const SLOW = { timeout: 300_000 };
const tools: OpenAI.ChatCompletionTool[] = [{
  type: "function",
  function: { name: "get_weather", description: "Weather of a city", parameters: { type: "object", properties: { city: { type: "string" } } } },
}];

/** A chat message as an RL client keeps it: the OpenAI fields plus the token fields of the turn that made it. */
type Message = Record<string, unknown>;

async function tokenize(body: unknown): Promise<number[]> {
  const res = await fetch(`${base}/tokenize`, { method: "POST", body: JSON.stringify(body) });
  assert.equal(res.status, 200);
  return (await res.json()).tokens;
}

function startsWith(ids: readonly number[], prefix: readonly number[]): boolean {
  return prefix.length <= ids.length && prefix.every((id, i) => ids[i] === id);
}

/** " Skinny" as the model might have produced it: two tokens where the tokenizer makes one (or another split). */
function offPolicySplit(): { text: string; ids: number[] } {
  const { tokenizer } = served;
  for (const [text, cut] of [[" Skinny", 3], [" unbelievable", 4], [" weather", 3]] as const) {
    const canonical = tokenizer.encode(text, { addSpecialTokens: false });
    const split = [...tokenizer.encode(text.slice(0, cut), { addSpecialTokens: false }), ...tokenizer.encode(text.slice(cut), { addSpecialTokens: false })];
    if (split.join() !== canonical.join()) return { text, ids: split };
  }
  throw new Error("no word re-tokenizes differently");
}

test("a chat-completions agent loop stays on policy for six turns, including a turn that re-tokenizes differently", SLOW, async () => {
  const messages: Message[] = [
    { role: "system", content: "You are a weather agent. Call get_weather." },
    { role: "user", content: "What is the weather in Paris, Rome and Oslo?" },
  ];
  let previous: number[] | null = null;
  const offPolicy = offPolicySplit();
  for (let turn = 0; turn < 6; turn++) {
    // Even turns end with a sampled EOS (min_tokens, then the bias); odd turns are cut by max_tokens.
    const ending = turn % 2 === 0 ? { min_tokens: 3, logit_bias: { [EOS]: 100 } } : {};
    // Turn 4 names the model's prefix at the top level instead of through the message fields.
    const prefixField: { required_prefix_token_ids?: number[] } = turn === 4 && previous ? { required_prefix_token_ids: previous } : {};
    const sent = turn === 4 ? messages.map(({ prompt_token_ids: _p, generation_token_ids: _g, ...m }) => m) : messages;
    const body = { model: MODEL, messages: sent, tools, max_tokens: 6, logprobs: true, top_logprobs: 1, seed: 100 + turn, ...ending, ...prefixField };
    const out = await client.chat.completions.create(body as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const message = out.choices[0].message as unknown as Message & { prompt_token_ids: number[]; generation_token_ids: number[]; generation_log_probs: number[] };
    const prompt = message.prompt_token_ids;
    if (previous) assert.ok(startsWith(prompt, previous), `turn ${turn}: the prompt starts with the previous prompt + generation`);
    assert.deepEqual(prompt, await tokenize({ messages: sent, tools, ...prefixField }), `turn ${turn}: /tokenize agrees`);
    assert.deepEqual(message.generation_log_probs, out.choices[0].logprobs!.content!.map((c) => c.logprob));
    if (turn % 2 === 0) assert.equal(message.generation_token_ids.at(-1), EOS, `turn ${turn} sampled EOS`);

    let generation = message.generation_token_ids;
    let content = message.content as string;
    if (turn === 2) {
      // The model's tokens for this turn are " Skinny" split where the tokenizer would not split it: re-rendering
      // the text gives other ids, and the next prompt must keep these.
      generation = [...offPolicy.ids, EOS];
      content = offPolicy.text;
    }
    const call = { id: `call_${turn}`, type: "function", function: { name: "get_weather", arguments: JSON.stringify({ city: ["Paris", "Rome", "Oslo"][turn % 3] }) } };
    messages.push(
      { role: "assistant", content, tool_calls: [call], prompt_token_ids: prompt, generation_token_ids: generation },
      { role: "tool", tool_call_id: call.id, content: JSON.stringify({ sky: "clear", turn }) },
    );
    previous = [...prompt, ...generation];
  }
  // The last prompt holds the off-policy split exactly where the model produced it, not its re-tokenization.
  const final = await tokenize({ messages, tools });
  assert.ok(startsWith(final, previous!));
  const rerendered = await tokenize({ messages: messages.map(({ prompt_token_ids: _p, generation_token_ids: _g, ...m }) => m), tools });
  assert.notDeepEqual(rerendered, final, "plain re-rendering is off policy");
  const at = final.findIndex((_, i) => offPolicy.ids.every((id, j) => final[i + j] === id));
  assert.ok(at > 0, "the split tokens are in the prompt");
  const rerenderedText = served.tokenizer.decode(rerendered);
  assert.ok(rerenderedText.includes(offPolicy.text));
});

test("a Responses agent loop sends its output items back and stays on policy for five turns", SLOW, async () => {
  const input: Record<string, unknown>[] = [{ role: "user", content: "Plan a trip; check the weather first." }];
  const responseTools = [{ type: "function", name: "get_weather", parameters: { type: "object", properties: {} }, strict: false }];
  let previous: number[] | null = null;
  for (let turn = 0; turn < 5; turn++) {
    const ending = turn % 2 === 1 ? { min_tokens: 2, logit_bias: { [EOS]: 100 } } : {};
    const body = { model: MODEL, input, tools: responseTools, max_output_tokens: 5, seed: 200 + turn, ...ending };
    const out = await client.responses.create(body as unknown as OpenAI.Responses.ResponseCreateParamsNonStreaming);
    const last = out.output.at(-1) as unknown as { prompt_token_ids: number[]; generation_token_ids: number[] };
    if (previous) assert.ok(startsWith(last.prompt_token_ids, previous), `turn ${turn}: on policy`);
    previous = [...last.prompt_token_ids, ...last.generation_token_ids];
    // The agent answers as if the model had called the tool: its output items, then a call and its result.
    const callId = `call_r${turn}`;
    input.push(
      ...(out.output as unknown as Record<string, unknown>[]),
      { type: "function_call", call_id: callId, name: "get_weather", arguments: "{}" },
      { type: "function_call_output", call_id: callId, output: "clear" },
    );
  }
  assert.ok(previous!.length > 0);
});
