/**
 * The tokenizer built in slices (tokenizer-load.ts, from tokenizer.json taken apart on the model thread) is the
 * object transformers.js builds in one go: the same maps, ids and special tokens, and the same encodings.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { AutoTokenizer, type PreTrainedTokenizer } from "@huggingface/transformers";
import { tokenizerFiles } from "../../src/model/builder/hf-files.ts";
import { getPreset } from "../../src/model/builder/presets.ts";
import { tokenizerFromParts } from "../../src/model/tokenizer/tokenizer-load.ts";
import { tokenizerParts, type TokenizerParts } from "../../src/model/tokenizer/tokenizer-parts.ts";
import { fromWire, toWire } from "../../src/runtime/wire.ts";

const TEXTS = [
  "Hello, world",
  "  leading spaces and\ttabs\nand newlines\n\n",
  "naïve café — 東京 🚀 0123456789 1,234.56",
  "<|im_start|>user\nhi<|im_end|><|endoftext|>",
  "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
  "def f(x):\n    return x ** 2  # squares\n",
];

/** A folder with a preset's tokenizer files only. */
function tokenizerDir(presetName: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `gym-edge-tokenizer-${presetName}-`));
  const { tokenizer, tokenizerConfig } = tokenizerFiles(getPreset(presetName));
  fs.writeFileSync(path.join(dir, "tokenizer.json"), tokenizer);
  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), tokenizerConfig);
  return dir;
}

// deno-lint-ignore no-explicit-any
const inside = (t: PreTrainedTokenizer) => (t as any)._tokenizer.model;

describe("tokenizer built in slices", () => {
  for (const presetName of ["tiny", "tiny-llama3"]) {
    test(`${presetName}: the same tokenizer transformers.js builds`, async () => {
      const dir = tokenizerDir(presetName);
      try {
        const expected = await AutoTokenizer.from_pretrained(dir, { local_files_only: true });
        const taken = tokenizerParts(path.join(dir, "tokenizer.json"));
        assert.ok(taken, "a BPE tokenizer is taken apart");
        // As the model thread sends them: buffers moved, no typed array in the message.
        const transfer = [taken.vocab.ends.buffer, taken.vocab.ids.buffer, taken.merges.ends.buffer] as ArrayBuffer[];
        const wire = toWire(taken, transfer) as { vocab: Record<string, unknown>; merges: Record<string, unknown> };
        assert.ok([wire.vocab.ends, wire.vocab.ids, wire.merges.ends].every((b) => !ArrayBuffer.isView(b)));
        const parts = fromWire(structuredClone(wire, { transfer })) as TokenizerParts;
        const built = await tokenizerFromParts(dir, parts);
        assert.ok(built, "and built in slices");
        assert.equal(built.constructor, expected.constructor);

        const [a, b] = [inside(built), inside(expected)];
        assert.deepEqual([...a.tokens_to_ids], [...b.tokens_to_ids], "vocabulary map, in order");
        assert.equal(a.vocab.length, b.vocab.length);
        assert.ok(b.vocab.every((t: string, i: number) => a.vocab[i] === t), "id -> token");
        assert.deepEqual(a.merges, b.merges);
        assert.deepEqual([...a.bpe_ranks], [...b.bpe_ranks], "merge ranks, in order");
        assert.equal(a.unk_token_id, b.unk_token_id);
        for (const special of ["mask", "pad", "sep", "unk", "bos", "eos"]) {
          const key = `${special}_token_id` as keyof PreTrainedTokenizer;
          assert.equal(built[key], expected[key], key);
        }
        assert.deepEqual(built.all_special_ids, expected.all_special_ids);
        // The first get_vocab() is the one built during the load; later ones are built at the call, as usual.
        assert.deepEqual([...built.get_vocab()], [...expected.get_vocab()]);
        assert.deepEqual([...built.get_vocab()], [...expected.get_vocab()]);
        const withoutAdded = (t: PreTrainedTokenizer) =>
          (t.get_vocab as unknown as (withAdded: boolean) => Map<string, number>).call(t, false);
        assert.deepEqual([...withoutAdded(built)], [...withoutAdded(expected)]);

        for (const text of TEXTS) {
          const ids = expected.encode(text);
          assert.deepEqual(built.encode(text), ids, text);
          assert.equal(built.decode(ids), expected.decode(ids), text);
        }
        const messages = [{ role: "user", content: "What is 2 + 2?" }, { role: "assistant", content: "4" }];
        assert.deepEqual(
          built.apply_chat_template(messages, { tokenize: true, return_dict: false }),
          expected.apply_chat_template(messages, { tokenize: true, return_dict: false }),
        );
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  test("a tokenizer that is not BPE is left to transformers.js", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gym-edge-tokenizer-unigram-"));
    try {
      const file = path.join(dir, "tokenizer.json");
      fs.writeFileSync(file, JSON.stringify({ model: { type: "Unigram", vocab: [["a", 0]] } }));
      assert.equal(tokenizerParts(file), null);
      assert.equal(await tokenizerFromParts(dir, null), null);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
