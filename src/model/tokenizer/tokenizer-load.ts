/**
 * A BPE tokenizer built without holding the thread for long. transformers.js builds one in its constructor, in a
 * single stretch: for Qwen3's 151,936 tokens, parsing tokenizer.json and filling the vocabulary and merge maps held
 * the thread for 1-3 s here, and no HTTP request could be answered meanwhile. So tokenizer.json is parsed on the
 * model thread (tokenizer-parts.ts), the tokenizer class is constructed over an empty vocabulary (fast), and its
 * maps are filled in slices of a few ms, yielding to the event loop between slices. What comes out is the object
 * transformers.js would have built: the same maps, in the same order, with the same ids derived from them.
 * Written against transformers.js 4.3.1 (pinned); tokenizers it does not cover take transformers.js's own path.
 */
import * as transformers from "@huggingface/transformers";
import type { PreTrainedTokenizer } from "@huggingface/transformers";
import { readFile } from "node:fs/promises";
import * as path from "node:path";
import type { PackedStrings, TokenizerParts } from "./tokenizer-parts.ts";

/** Tokenizer classes whose constructor reads nothing of the vocabulary beyond PreTrainedTokenizer's own. */
const PLAIN_CLASSES = new Set([
  "PreTrainedTokenizer",
  "Qwen2Tokenizer",
  "LlamaTokenizer",
  "GPT2Tokenizer",
  "GemmaTokenizer",
  "CodeGenTokenizer",
  "GPTNeoXTokenizer",
]);

/** The special tokens whose ids PreTrainedTokenizer looks up in the vocabulary when it is constructed. */
const SPECIAL = ["mask", "pad", "sep", "unk", "bos", "eos"];

/** How long one slice of work may hold the thread. */
const SLICE_MS = 8;

/** The inside of transformers.js's BPE model and tokenizer, as far as filling them needs. */
interface BpeModel {
  tokens_to_ids: Map<string, number>;
  vocab: string[];
  merges: string[][];
  bpe_ranks: Map<string, number>;
  unk_token?: string;
  unk_token_id?: number;
}
interface TokenizerInside {
  model: BpeModel;
  added_tokens: { content: string; id: number }[];
  token_to_id(token: string): number | undefined;
}

/**
 * The tokenizer of local directory `dir`, built in slices from `parts` (its tokenizer.json taken apart, see
 * tokenizerParts); null when its class or model is not one this covers (then load it with AutoTokenizer).
 */
export async function tokenizerFromParts(
  dir: string,
  parts: TokenizerParts | null,
): Promise<PreTrainedTokenizer | null> {
  if (!parts) return null;
  const config = JSON.parse(await readFile(path.join(dir, "tokenizer_config.json"), "utf8"));
  const name = typeof config.tokenizer_class === "string"
    ? config.tokenizer_class.replace(/Fast$/, "")
    : "PreTrainedTokenizer";
  const Class =
    (transformers as unknown as Record<string, new (json: unknown, config: unknown) => PreTrainedTokenizer>)[name];
  if (!PLAIN_CLASSES.has(name) || typeof Class !== "function") return null;
  const tokenizer = new Class(parts.json, config);
  const inside = (tokenizer as unknown as { _tokenizer: TokenizerInside })._tokenizer;
  const model = inside.model;
  if (
    !(model?.tokens_to_ids instanceof Map) || !(model.bpe_ranks instanceof Map) || !Array.isArray(inside.added_tokens)
  ) return null;

  // As BPE's constructor: the vocabulary map in Object.entries order, the id -> token array, the unknown token's id.
  const { vocab, merges } = parts;
  const tokensToIds = new Map<string, number>();
  const token = unpack(vocab);
  await inSlices(vocab.ends.length, (i) => tokensToIds.set(token(i), vocab.ids[i]));
  const idsToTokens: string[] = new Array(tokensToIds.size);
  await inSlices(vocab.ends.length, (i) => idsToTokens[vocab.ids[i]] = token(i));
  const unkTokenId = model.unk_token === undefined ? undefined : tokensToIds.get(model.unk_token);
  // Merge parts are vocabulary tokens: the vocabulary's own strings are kept rather than a second copy of each.
  const part = unpack(merges);
  const interned = (k: number) => {
    const s = part(k);
    const id = tokensToIds.get(s);
    return id !== undefined && idsToTokens[id] === s ? idsToTokens[id] : s;
  };
  const pairs: string[][] = new Array(merges.ends.length / 2);
  await inSlices(pairs.length, (i) => pairs[i] = [interned(2 * i), interned(2 * i + 1)]);
  const ranks = new Map<string, number>();
  await inSlices(pairs.length, (i) => ranks.set(JSON.stringify(pairs[i]), i));
  // As Tokenizer's constructor: added tokens enter the vocabulary after it.
  for (const added of inside.added_tokens) {
    tokensToIds.set(added.content, added.id);
    idsToTokens[added.id] = added.content;
  }
  Object.assign(model, {
    tokens_to_ids: tokensToIds,
    vocab: idsToTokens,
    merges: pairs,
    bpe_ranks: ranks,
    unk_token_id: unkTokenId,
  });
  // As PreTrainedTokenizer's constructor: the special tokens' ids, now that the vocabulary is there.
  const fields = tokenizer as unknown as Record<string, unknown>;
  for (const special of SPECIAL) {
    fields[`${special}_token_id`] = inside.token_to_id(fields[`${special}_token`] as string);
  }
  // get_vocab() builds a token -> id map of the whole vocabulary at each call (a few hundred ms here): the first
  // call, the server's own as it starts (ChatTokenizer), gets one built now in slices; later calls build their own.
  const vocabMap = new Map<string, number>();
  await inSlices(idsToTokens.length, (i) => vocabMap.set(idsToTokens[i], i));
  const getVocab = tokenizer.get_vocab;
  let prebuilt: Map<string, number> | null = vocabMap;
  fields.get_vocab = function (this: PreTrainedTokenizer, ...args: unknown[]) {
    const first = prebuilt;
    prebuilt = null;
    return first && args.length === 0
      ? first
      : (getVocab as (...a: unknown[]) => Map<string, number>).apply(this, args);
  };
  return tokenizer;
}

/** Entry i of packed strings. */
function unpack({ text, ends }: PackedStrings): (i: number) => string {
  return (i) => text.slice(i === 0 ? 0 : ends[i - 1], ends[i]);
}

/** Calls each(0..count-1) in slices of about SLICE_MS, letting the event loop run between them. */
async function inSlices(count: number, each: (i: number) => void): Promise<void> {
  let i = 0;
  while (i < count) {
    const until = performance.now() + SLICE_MS;
    do each(i++); while (i < count && ((i & 1023) !== 0 || performance.now() < until));
    if (i < count) await new Promise((resolve) => setTimeout(resolve, 0));
  }
}
