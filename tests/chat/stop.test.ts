import { test } from "node:test";
import assert from "node:assert/strict";
import { IncrementalDetokenizer, TokenTexts } from "../../src/chat/detokenize.ts";
import { StopStringMatcher } from "../../src/chat/stop.ts";
import { qwen3 } from "../api/app-fixture.ts";

/** Feeds pieces through a matcher; returns what it emitted and the stop string found. */
function run(matcher: StopStringMatcher, pieces: string[]): { text: string; stop: string | null } {
  let text = "";
  let stop: string | null = null;
  for (const piece of pieces) {
    const out = matcher.push(piece);
    text += out.text;
    stop ??= out.stop;
    if (stop) break;
  }
  return { text: text + matcher.flush(), stop };
}

test("a stop string split across pieces still stops, and is cut from the output", () => {
  assert.deepEqual(run(new StopStringMatcher(["STOP"]), ["abc S", "TO", "Pxyz"]), { text: "abc ", stop: "STOP" });
});

test("include_stop_str_in_output keeps the stop string and drops only what follows it", () => {
  const matcher = new StopStringMatcher(["\n\n"], { includeStopString: true });
  assert.deepEqual(run(matcher, ["one\n", "\ntwo"]), { text: "one\n\n", stop: "\n\n" });
});

test("text that might begin a stop string is held back, then released when it does not", () => {
  const matcher = new StopStringMatcher(["</end>"]);
  assert.deepEqual(matcher.push("a </e"), { text: "a ", stop: null });
  assert.deepEqual(matcher.push("x"), { text: "</ex", stop: null });
  assert.equal(matcher.flush(), "");
  const tail = new StopStringMatcher(["</end>"]);
  tail.push("ends with </en");
  assert.equal(tail.flush(), "</en", "the held tail is emitted when generation ends");
});

test("the earliest stop string wins; nothing is emitted after a stop", () => {
  const matcher = new StopStringMatcher(["world", "lo w"]);
  assert.deepEqual(matcher.push("hello world"), { text: "hel", stop: "lo w" });
  assert.deepEqual(matcher.push("more"), { text: "", stop: null });
  assert.equal(matcher.stopped, "lo w");
});

test("no stop strings: text passes straight through", () => {
  const matcher = new StopStringMatcher([""]);
  assert.equal(matcher.active, false);
  assert.deepEqual(matcher.push("a"), { text: "a", stop: null });
});

// The id of a vocabulary string (byte-level, e.g. "ð" for the lone byte F0).
function idOf(vocab: string): number {
  for (let id = 0; id < qwen3.vocabSize; id++) if (qwen3.tokenStrings([id])[0] === vocab) return id;
  throw new Error(`no token ${vocab}`);
}

test("the detokenizer's pieces join to the whole decoding", () => {
  const text = "héllo 世界 🙂🙃 ok\n\n<think>x</think>";
  const ids = qwen3.encode(text, { addSpecialTokens: false });
  const detok = new IncrementalDetokenizer(qwen3);
  const pieces = ids.map((id) => detok.push(id));
  pieces.push(detok.flush());
  assert.equal(pieces.join(""), text);
  assert.equal(detok.text, text);
});

test("the detokenizer holds a character split across tokens until its last byte arrives", () => {
  // 🙂 is F0 9F 99 82: sampled as four single-byte tokens it must come out once, whole.
  const bytes = ["ð", "Ł", "Ļ", "Ĥ"].map(idOf);
  const detok = new IncrementalDetokenizer(qwen3);
  const pieces = [...qwen3.encode("a", { addSpecialTokens: false }), ...bytes].map((id) => detok.push(id));
  assert.deepEqual(pieces, ["a", "", "", "", "🙂"]);
  assert.equal(detok.flush(), "");
  const texts = new TokenTexts(qwen3);
  assert.deepEqual(texts.bytes(bytes[0]), [0xf0], "a partial token reports its real byte, not U+FFFD");
  const cut = new IncrementalDetokenizer(qwen3);
  assert.equal(cut.push(bytes[0]) + cut.push(bytes[1]), "");
  assert.equal(cut.flush(), "\uFFFD", "generation that ends mid-character ends with one replacement character");
});

test("special tokens are skipped unless asked for, and TokenTexts reports each token's own bytes", () => {
  const imEnd = 151645;
  const skip = new IncrementalDetokenizer(qwen3);
  assert.equal(skip.push(imEnd) + skip.flush(), "");
  const keep = new IncrementalDetokenizer(qwen3, { skipSpecialTokens: false });
  assert.equal(keep.push(imEnd) + keep.flush(), "<|im_end|>");
  const texts = new TokenTexts(qwen3);
  assert.equal(texts.text(311), " to");
  assert.deepEqual(texts.bytes(311), [32, 116, 111]);
  assert.equal(texts.text(imEnd), "<|im_end|>");
});
