/**
 * Shape checks of the answers the chaos load gets: choices for every sample, the token ids and log-probabilities
 * asked for, usage, and a policy version on every body, chunk and event. Each check returns the problem, or null.
 */
// deno-lint-ignore no-explicit-any
export type Json = any;

/** What a well-formed request asked for. */
export interface Asked {
  route: "chat" | "completions" | "responses";
  /** Choices expected: n, times the prompts of a completions batch. */
  choices: number;
  /** Top log-probabilities per token (chat top_logprobs, completions logprobs, responses top_logprobs). */
  topLogprobs: number;
  returnTokenIds: boolean;
  includeUsage: boolean;
}

const isInt = (v: unknown): v is number => Number.isInteger(v);
const isIds = (v: unknown, min = 1): v is number[] =>
  Array.isArray(v) && v.length >= min && v.every((x) => isInt(x) && x >= 0);
const isLogprob = (v: unknown) => typeof v === "number" && Number.isFinite(v) && v <= 0 && v >= -9999;

function usageProblem(usage: Json, keys: [string, string, string]): string | null {
  const [input, output, total] = keys;
  if (!usage || !isInt(usage[input]) || !isInt(usage[output]) || !isInt(usage[total])) {
    return `usage lacks ${keys.join("/")}`;
  }
  if (usage[input] < 1 || usage[output] < 1 || usage[total] !== usage[input] + usage[output]) {
    return `usage does not add up: ${JSON.stringify(usage)}`;
  }
  return null;
}

function versionProblem(body: Json): string | null {
  return isInt(body?.policy_version) && body.policy_version >= 0 ? null : "no policy_version";
}

function chatChoiceProblem(choice: Json, asked: Asked): string | null {
  const m = choice.message;
  if (m?.role !== "assistant") return "a choice without an assistant message";
  if (!isIds(m.prompt_token_ids)) return "message.prompt_token_ids missing with logprobs";
  if (!isIds(m.generation_token_ids)) return "message.generation_token_ids missing with logprobs";
  const ids = m.generation_token_ids as number[];
  const lps = m.generation_log_probs;
  if (!Array.isArray(lps) || lps.length !== ids.length || !lps.every(isLogprob)) {
    return "generation_log_probs do not match the ids";
  }
  const content = choice.logprobs?.content;
  if (!Array.isArray(content) || content.length !== ids.length) {
    return "logprobs.content does not match generation_token_ids";
  }
  for (const [j, entry] of content.entries()) {
    if (entry.logprob !== lps[j]) return "logprobs.content[j].logprob differs from generation_log_probs[j]";
    if (!Array.isArray(entry.top_logprobs) || entry.top_logprobs.length !== asked.topLogprobs) {
      return "top_logprobs of the wrong length";
    }
  }
  if (asked.returnTokenIds && JSON.stringify(choice.token_ids) !== JSON.stringify(ids)) {
    return "token_ids differ from generation_token_ids";
  }
  return null;
}

function completionChoiceProblem(choice: Json, asked: Asked): string | null {
  if (typeof choice.text !== "string") return "a choice without text";
  const lp = choice.logprobs;
  const count = lp?.tokens?.length;
  if (!isInt(count) || count < 1) return "logprobs.tokens missing";
  for (const key of ["token_logprobs", "top_logprobs", "text_offset"]) {
    if (!Array.isArray(lp[key]) || lp[key].length !== count) return `logprobs.${key} does not match logprobs.tokens`;
  }
  if (!lp.token_logprobs.every(isLogprob)) return "a token logprob out of range";
  if (asked.returnTokenIds && !(isIds(choice.token_ids) && choice.token_ids.length === count)) {
    return "token_ids missing or of the wrong length";
  }
  return null;
}

function responseOutputProblem(output: Json, asked: Asked): string | null {
  if (!Array.isArray(output) || output.length === 0) return "no output items";
  const last = output[output.length - 1];
  if (!isIds(last.prompt_token_ids) || !isIds(last.generation_token_ids)) {
    return "the last output item lacks its token ids";
  }
  const lps = last.generation_log_probs;
  if (!Array.isArray(lps) || lps.length !== last.generation_token_ids.length || !lps.every(isLogprob)) {
    return "generation_log_probs do not match";
  }
  const message = output.find((item: Json) => item.type === "message");
  if (asked.topLogprobs > 0 && message && !Array.isArray(message.content?.[0]?.logprobs)) {
    return "output_text lacks logprobs";
  }
  return null;
}

/** Checks a whole (non-streamed) answer. */
export function answerProblem(body: Json, asked: Asked): string | null {
  const version = versionProblem(body);
  if (version) return version;
  if (asked.route === "responses") {
    if (body.object !== "response" || !["completed", "incomplete"].includes(body.status)) {
      return `response status ${body.status}`;
    }
    return responseOutputProblem(body.output, asked) ??
      usageProblem(body.usage, ["input_tokens", "output_tokens", "total_tokens"]);
  }
  const object = asked.route === "chat" ? "chat.completion" : "text_completion";
  if (body.object !== object) return `object ${body.object}`;
  if (!Array.isArray(body.choices) || body.choices.length !== asked.choices) {
    return `${body.choices?.length} choices, asked ${asked.choices}`;
  }
  for (const [i, choice] of body.choices.entries()) {
    if (choice.index !== i) return `choice ${i} has index ${choice.index}`;
    if (!["stop", "length"].includes(choice.finish_reason)) return `finish_reason ${choice.finish_reason}`;
    const problem = asked.route === "chat" ? chatChoiceProblem(choice, asked) : completionChoiceProblem(choice, asked);
    if (problem) return `choice ${i}: ${problem}`;
  }
  return usageProblem(body.usage, ["prompt_tokens", "completion_tokens", "total_tokens"]);
}

/** Follows a stream chunk by chunk (chat and completions chunks, or Responses events) and checks its end. */
export class StreamCheck {
  readonly versions: number[] = [];
  readonly #finished = new Set<number>();
  readonly #tokens = new Map<number, number>();
  #usage = false;
  #final: Json = null;
  problem: string | null = null;
  chunks = 0;

  constructor(readonly asked: Asked) {}

  /** Takes one chunk (or event); returns an error message when it is an error event. */
  push(chunk: Json): string | null {
    this.chunks++;
    if (isInt(chunk.policy_version)) this.versions.push(chunk.policy_version);
    else this.problem ??= "a chunk without policy_version";
    if (this.asked.route === "responses") return this.#event(chunk);
    if (chunk.usage) this.#usage = true;
    for (const choice of chunk.choices ?? []) {
      if (!isInt(choice.index) || choice.index < 0 || choice.index >= this.asked.choices) {
        this.problem ??= `chunk for choice ${choice.index}`;
      }
      const ids = this.asked.route === "chat" ? choice.delta?.generation_token_ids : choice.logprobs?.tokens;
      if (Array.isArray(ids)) this.#tokens.set(choice.index, (this.#tokens.get(choice.index) ?? 0) + ids.length);
      if (choice.finish_reason) this.#finished.add(choice.index);
    }
    return null;
  }

  #event(event: Json): string | null {
    const type = String(event.type ?? "");
    if (!type.startsWith("response.")) return String(event.message ?? JSON.stringify(event));
    if (type === "response.completed" || type === "response.incomplete") {
      this.#final = event.response;
      this.#finished.add(0);
    }
    return null;
  }

  /** The problem with a stream that ended without an error event: a missing finish, token fields or usage. */
  end(): { truncated: boolean; problem: string | null } {
    if (this.#finished.size !== this.asked.choices) {
      return { truncated: true, problem: `${this.#finished.size} of ${this.asked.choices} choices finished` };
    }
    if (this.problem) return { truncated: false, problem: this.problem };
    if (this.asked.route === "responses") {
      return { truncated: false, problem: responseOutputProblem(this.#final?.output, this.asked) };
    }
    for (let i = 0; i < this.asked.choices; i++) {
      if (!this.#tokens.get(i)) return { truncated: false, problem: `choice ${i} streamed no token ids/logprobs` };
    }
    if (this.asked.includeUsage && !this.#usage) return { truncated: false, problem: "no usage chunk" };
    return { truncated: false, problem: null };
  }
}
