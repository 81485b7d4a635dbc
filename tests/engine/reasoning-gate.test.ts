/** A grammar behind the reasoning gate: free while the model reasons, enforced from `</think>` on. */
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { ChatTokenizer } from "../../src/chat/template.ts";
import { Grammars } from "../../src/engine/grammar/grammars.ts";
import { ReasoningGate } from "../../src/engine/grammar/reasoning-gate.ts";
import type { CompiledConstraint } from "../../src/engine/grammar/grammars.ts";
import { tinyModelDir } from "../support/served.ts";

const VOCAB = 151936;
const allowed = (mask: Uint32Array, t: number) => ((mask[t >>> 5] >>> (t & 31)) & 1) === 1;
const count = (mask: Uint32Array) => {
  let n = 0;
  for (let t = 0; t < VOCAB; t++) if (allowed(mask, t)) n++;
  return n;
};

let tokenizer: ChatTokenizer;
let compiled: CompiledConstraint;
let open: number;
let close: number;

before(async () => {
  tokenizer = await ChatTokenizer.load(await tinyModelDir());
  const grammars = new Grammars(() => ({
    tokens: tokenizer.tokenStrings(Array.from({ length: tokenizer.vocabSize }, (_, i) => i)),
    vocabSize: VOCAB,
    stopTokenIds: [tokenizer.eosTokenId!],
  }));
  compiled = await grammars.compile({ kind: "choice", choices: ["yes", "no"] });
  [open] = tokenizer.encode("<think>", { addSpecialTokens: false });
  [close] = tokenizer.encode("</think>", { addSpecialTokens: false });
});

test("qwen3: the first token may open the reasoning; inside it anything goes; after it the grammar holds", { timeout: 120_000 }, () => {
  const gate = new ReasoningGate(compiled.matcher(), { open, close });
  const mask = new Uint32Array(Math.ceil(VOCAB / 32));
  assert.ok(gate.fillNextMask(mask));
  assert.ok(allowed(mask, open), "<think> may come first");
  const [yes] = tokenizer.encode("yes", { addSpecialTokens: false });
  const [word] = tokenizer.encode(" because", { addSpecialTokens: false });
  assert.ok(allowed(mask, yes) && !allowed(mask, word), "so may the grammar's first token, and nothing else");
  gate.accept(open);
  gate.fillNextMask(mask);
  assert.equal(count(mask), VOCAB, "while reasoning, the whole vocabulary");
  gate.accept(word);
  gate.accept(close);
  gate.fillNextMask(mask);
  assert.deepEqual([allowed(mask, yes), allowed(mask, word), allowed(mask, open)], [true, false, false], "after </think>, the grammar alone");
  for (const id of tokenizer.encode("yes", { addSpecialTokens: false })) gate.accept(id);
  gate.fillNextMask(mask);
  assert.deepEqual([...Array(VOCAB).keys()].filter((t) => allowed(mask, t)), [tokenizer.eosTokenId], "then only the end");
  assert.ok(gate.done);
  gate.dispose();
});

test("qwen3: output that does not open with <think> is content under the grammar from the first token", () => {
  const gate = new ReasoningGate(compiled.matcher(), { open, close });
  const mask = new Uint32Array(Math.ceil(VOCAB / 32));
  const [n] = tokenizer.encode("no", { addSpecialTokens: false });
  gate.fillNextMask(mask);
  gate.accept(n);
  gate.fillNextMask(mask);
  assert.ok(!allowed(mask, open), "<think> is no longer allowed");
  assert.ok(allowed(mask, tokenizer.eosTokenId!));
  gate.dispose();
});

test("deepseek_r1: reasoning from the start, the grammar after </think>", () => {
  const gate = new ReasoningGate(compiled.matcher(), { open: null, close });
  const mask = new Uint32Array(Math.ceil(VOCAB / 32));
  gate.fillNextMask(mask);
  assert.equal(count(mask), VOCAB);
  gate.accept(close);
  gate.fillNextMask(mask);
  assert.ok(count(mask) < 10);
  gate.dispose();
});
