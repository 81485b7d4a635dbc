/**
 * Reasoning parsers: the model's `<think>...</think>` text moves out of the content into `reasoning_content`.
 * - `qwen3`: reasoning only when the output opens with `<think>` (Qwen3 writes the tag itself; with thinking
 *   disabled the template closes an empty block in the prompt and the output is all content).
 * - `deepseek_r1`: the template opens the block in the prompt, so the output is reasoning until `</think>`
 *   (a leading `<think>` is dropped); output cut before `</think>` is all reasoning.
 * Streaming and whole-text parsing share one state machine, so both split a text the same way.
 */
import { partialTagLength } from "./stop.ts";

/** The names `--reasoning-parser` accepts. */
export const REASONING_PARSERS = ["qwen3", "deepseek_r1"] as const;
export type ReasoningParserName = (typeof REASONING_PARSERS)[number];

const OPEN = "<think>";
const CLOSE = "</think>";

/** A text split into reasoning and content; each null when the text has none of it. */
export interface ReasoningSplit {
  reasoning: string | null;
  content: string | null;
}

/** The pieces one streamed text delta gives ("" when none). */
export interface ReasoningDelta {
  reasoning: string;
  content: string;
}

/** An unknown parser name. */
export class UnknownReasoningParserError extends Error {
  constructor(name: string) {
    super(`unknown reasoning parser '${name}'; known: ${REASONING_PARSERS.join(", ")}`);
    this.name = "UnknownReasoningParserError";
  }
}

type Phase = "opening" | "reasoning" | "content";

/** Splits one generation's text, delta by delta. */
export class ReasoningStream {
  #phase: Phase = "opening";
  #held = "";
  #sawReasoning = false;

  constructor(readonly parser: ReasoningParserName) {}

  /** Whether the output is past its reasoning (everything from now on is content). */
  get inContent(): boolean {
    return this.#phase === "content";
  }

  /** Adds generated text; returns what of it is reasoning and what content. */
  push(delta: string): ReasoningDelta {
    const out: ReasoningDelta = { reasoning: "", content: "" };
    let text = this.#held + delta;
    this.#held = "";
    if (this.#phase === "opening") {
      const trimmed = text.trimStart();
      if (trimmed.length < OPEN.length && OPEN.startsWith(trimmed)) {
        this.#held = text;
        return out;
      }
      if (trimmed.startsWith(OPEN)) {
        text = trimmed.slice(OPEN.length);
        this.#enterReasoning();
      } else if (this.parser === "deepseek_r1") {
        this.#enterReasoning();
      } else {
        this.#phase = "content";
      }
    }
    if (this.#phase === "reasoning") {
      const end = text.indexOf(CLOSE);
      if (end < 0) {
        const keep = partialTagLength(text, CLOSE);
        this.#held = text.slice(text.length - keep);
        out.reasoning = text.slice(0, text.length - keep);
        return out;
      }
      out.reasoning = text.slice(0, end);
      text = text.slice(end + CLOSE.length);
      this.#phase = "content";
    }
    out.content = text;
    return out;
  }

  /** What is held back when generation ends. */
  flush(): ReasoningDelta {
    const held = this.#held;
    this.#held = "";
    if (this.#phase === "reasoning") return { reasoning: held, content: "" };
    if (this.#phase === "opening" && this.parser === "deepseek_r1" && held !== "") {
      this.#sawReasoning = true;
      return { reasoning: held, content: "" };
    }
    return { reasoning: "", content: held };
  }

  /** Whether this output had a reasoning part at all. */
  get sawReasoning(): boolean {
    return this.#sawReasoning;
  }

  #enterReasoning(): void {
    this.#phase = "reasoning";
    this.#sawReasoning = true;
  }
}

/** Checks a parser name. */
export function reasoningParser(name: string): ReasoningParserName {
  if (!(REASONING_PARSERS as readonly string[]).includes(name)) throw new UnknownReasoningParserError(name);
  return name as ReasoningParserName;
}

/** Splits a whole generated text into reasoning and content. */
export function splitReasoning(parser: ReasoningParserName, text: string): ReasoningSplit {
  const stream = new ReasoningStream(parser);
  const a = stream.push(text);
  const b = stream.flush();
  const reasoning = a.reasoning + b.reasoning;
  const content = a.content + b.content;
  return { reasoning: stream.sawReasoning ? reasoning : null, content: content === "" ? null : content };
}
