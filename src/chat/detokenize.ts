/**
 * Generated token ids -> text, one token at a time. A character split across tokens (the bytes of "🙂" sampled as
 * two tokens) is held back until it is whole, so no streamed piece ever carries a broken UTF-8 sequence.
 */
import type { ChatTokenizer } from "./template.ts";

const REPLACEMENT = "\uFFFD";

/** Turns a growing list of token ids into text pieces; the pieces joined equal the decoding of all the ids. */
export class IncrementalDetokenizer {
  readonly #tokenizer: ChatTokenizer;
  readonly #skipSpecialTokens: boolean;
  readonly #ids: number[] = [];
  // Decoding starts at #prefixOffset (a token already emitted, so that tokenizers which strip a leading space of
  // the first token decode the new ones in context); text of [#prefixOffset, #readOffset) was emitted already.
  #prefixOffset = 0;
  #readOffset = 0;
  #text = "";

  constructor(tokenizer: ChatTokenizer, options: { skipSpecialTokens?: boolean } = {}) {
    this.#tokenizer = tokenizer;
    this.#skipSpecialTokens = options.skipSpecialTokens ?? true;
  }

  /** All text emitted so far. */
  get text(): string {
    return this.#text;
  }

  /** Adds one token; returns the text it completes ("" while a character is still incomplete). */
  push(tokenId: number): string {
    this.#ids.push(tokenId);
    const prefix = this.#decode(this.#prefixOffset, this.#readOffset);
    const full = this.#decode(this.#prefixOffset, this.#ids.length);
    if (full.length <= prefix.length || full.endsWith(REPLACEMENT) || !full.startsWith(prefix)) return "";
    this.#prefixOffset = this.#readOffset;
    this.#readOffset = this.#ids.length;
    return this.#emit(full.slice(prefix.length));
  }

  /** The text still held back at the end of generation (an incomplete character decodes as U+FFFD). */
  flush(): string {
    if (this.#readOffset === this.#ids.length) return "";
    const prefix = this.#decode(this.#prefixOffset, this.#readOffset);
    const full = this.#decode(this.#prefixOffset, this.#ids.length);
    this.#prefixOffset = this.#readOffset = this.#ids.length;
    return this.#emit(full.startsWith(prefix) ? full.slice(prefix.length) : full);
  }

  #emit(piece: string): string {
    this.#text += piece;
    return piece;
  }

  #decode(start: number, end: number): string {
    if (end <= start) return "";
    return this.#tokenizer.decode(this.#ids.slice(start, end), { skipSpecialTokens: this.#skipSpecialTokens });
  }
}

// GPT-2's byte-level alphabet: printable bytes stand for themselves, the others are shifted to 256 + n.
function byteLevelAlphabet(): Map<string, number> {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const map = new Map<string, number>();
  let shifted = 0;
  for (let b = 0; b < 256; b++) map.set(String.fromCodePoint(printable(b) ? b : 256 + shifted++), b);
  return map;
}
const BYTE_LEVEL = byteLevelAlphabet();
const utf8 = new TextEncoder();

/**
 * The text and bytes of single tokens, as logprobs report them: `text` is the token decoded alone, `bytes` its
 * UTF-8 bytes (for a byte-level vocabulary the token's own bytes, so a token holding half a character reports
 * the real half rather than U+FFFD). Cached: top logprobs ask for the same tokens again and again.
 */
export class TokenTexts {
  readonly #tokenizer: ChatTokenizer;
  readonly #cache = new Map<number, { text: string; bytes: number[] }>();

  constructor(tokenizer: ChatTokenizer) {
    this.#tokenizer = tokenizer;
  }

  /** The token decoded on its own (special tokens kept). */
  text(tokenId: number): string {
    return this.#entry(tokenId).text;
  }

  /** The token's bytes. */
  bytes(tokenId: number): number[] {
    return this.#entry(tokenId).bytes;
  }

  #entry(tokenId: number): { text: string; bytes: number[] } {
    let entry = this.#cache.get(tokenId);
    if (entry) return entry;
    const text = this.#tokenizer.isKnownId(tokenId) ? this.#tokenizer.decode([tokenId]) : "";
    const [vocab] = this.#tokenizer.tokenStrings([tokenId]);
    const raw = [...vocab].map((ch) => BYTE_LEVEL.get(ch));
    const byteLevel = vocab !== "" && text.includes(REPLACEMENT) && raw.every((b) => b !== undefined);
    entry = { text, bytes: byteLevel ? raw as number[] : [...utf8.encode(text)] };
    if (this.#cache.size > 65536) this.#cache.clear();
    this.#cache.set(tokenId, entry);
    return entry;
  }
}
