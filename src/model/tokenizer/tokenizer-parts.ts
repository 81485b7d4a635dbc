/**
 * tokenizer.json taken apart on the model thread: parsing a 151,936-token vocabulary (11 MB of JSON) held the
 * thread for a few hundred ms. What comes back is the document without its vocabulary and merges, and those two
 * as flat strings with the offsets where each entry ends: a message that costs the receiving thread a copy, not
 * the rebuilding of half a million small objects (tokenizer-load.ts rebuilds them in slices).
 */
import { readFileSync } from "node:fs";

/** Strings laid end to end: entry i is text.slice(ends[i - 1] ?? 0, ends[i]). */
export interface PackedStrings {
  text: string;
  ends: Int32Array;
}

/** A BPE tokenizer.json in pieces. */
export interface TokenizerParts {
  /** The document with model.vocab set to {} and model.merges to []. */
  json: Record<string, any>;
  /** The vocabulary's tokens in Object.entries order, and their ids. */
  vocab: PackedStrings & { ids: Int32Array };
  /** Every merge as its two parts, one after the other (what transformers.js keeps of "a b" or ["a", "b"]). */
  merges: PackedStrings;
}

/**
 * Reads `file` and takes its BPE vocabulary and merges out; null when it is not a BPE tokenizer with both. It reads
 * at once: on the model thread, a request queued behind it (opening the graph) should not get in between.
 */
export function tokenizerParts(file: string): TokenizerParts | null {
  const json = JSON.parse(readFileSync(file, "utf8"));
  const model = json?.model;
  if (model?.type !== "BPE" || typeof model.vocab !== "object" || !Array.isArray(model.merges)) return null;
  const entries = Object.entries(model.vocab as Record<string, number>);
  const ids = Int32Array.from(entries, ([, id]) => id);
  const vocab = { ...pack(entries.map(([token]) => token)), ids };
  // As transformers.js reads them: pairs as they are, "a b" split at its first space (split(" ", 2)).
  const listed = model.merges as unknown[];
  if (!listed.every((m) => Array.isArray(m) === Array.isArray(listed[0]))) return null;
  const pairs = listed.map((m) => Array.isArray(m) ? m : String(m).split(" ", 2));
  if (!pairs.every((p) => p.length === 2 && typeof p[0] === "string" && typeof p[1] === "string")) return null;
  const merges = pack(pairs.flat());
  json.model = { ...model, vocab: {}, merges: [] };
  return { json, vocab, merges };
}

function pack(strings: string[]): PackedStrings {
  const ends = new Int32Array(strings.length);
  let at = 0;
  strings.forEach((s, i) => ends[i] = at += s.length);
  return { text: strings.join(""), ends };
}
