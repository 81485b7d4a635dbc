/** What a caller holds of a request it submitted: its id, its token stream, and its progress, read live. */
import type { FinishReason, TokenEvent } from "./sequence.ts";

/** A submitted request: its id and the stream of its tokens. */
export interface SubmittedRequest {
  id: number;
  promptIds: readonly number[];
  /** Token events; the last carries the finish reason, except after an abort, which just ends the stream. */
  events: AsyncIterable<TokenEvent>;
  /** Why it ended, once it has. */
  readonly finishReason: FinishReason | null;
  /** When it was submitted and first scheduled (performance.now() milliseconds; null: not yet). */
  readonly arrivedAt: number;
  readonly scheduledAt: number | null;
  /** Prompt tokens whose KV came from the prefix cache when it was first scheduled. */
  readonly cachedPromptTokens: number;
}

/**
 * A handle on `request` (a sequence, or another handle) whose stream is `events`: the prompt is read once, the
 * progress (finish reason, scheduling, cache hits) each time it is asked for.
 */
export function requestHandle(
  request: Omit<SubmittedRequest, "events">,
  events: AsyncIterable<TokenEvent>,
): SubmittedRequest {
  return {
    id: request.id,
    promptIds: request.promptIds,
    events,
    get finishReason() {
      return request.finishReason;
    },
    arrivedAt: request.arrivedAt,
    get scheduledAt() {
      return request.scheduledAt;
    },
    get cachedPromptTokens() {
      return request.cachedPromptTokens;
    },
  };
}
