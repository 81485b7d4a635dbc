/**
 * Server-sent events: a Response whose body streams events as they are produced. A client that goes away
 * (the stream is cancelled, or the request's signal aborts) calls `onCancel` at once, so the engine stops
 * generating for nobody. An error in the middle of a stream is sent as an OpenAI error event, then the stream ends.
 */
import { type ErrorBody, errorPayload } from "./errors.ts";

const encoder = new TextEncoder();

/** A `data:` event holding `value` as JSON (chat and completions chunks). */
export function sseData(value: unknown): string {
  return `data: ${JSON.stringify(value)}\n\n`;
}

/** A named event (the Responses API names every event by its type). */
export function sseEvent(type: string, value: unknown): string {
  return `event: ${type}\ndata: ${JSON.stringify(value)}\n\n`;
}

/** The end of a chat or completions stream. */
export const SSE_DONE = "data: [DONE]\n\n";

/** How a stream ends when its producer throws. */
export type StreamErrorFormat = (body: ErrorBody) => string;

/** Streams `events` (each a whole serialized event) as text/event-stream. */
export function sseResponse(
  events: AsyncIterable<string>,
  options: { onCancel: () => void; signal?: AbortSignal; formatError?: StreamErrorFormat },
): Response {
  const iterator = events[Symbol.asyncIterator]();
  const formatError = options.formatError ?? ((body) => sseData(body) + SSE_DONE);
  let cancelled = false;
  const cancel = () => {
    if (cancelled) return;
    cancelled = true;
    options.onCancel();
    void iterator.return?.(undefined)?.catch(() => {});
  };
  options.signal?.addEventListener("abort", cancel, { once: true });
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { value, done } = await iterator.next();
        if (cancelled) return;
        if (done) controller.close();
        else controller.enqueue(encoder.encode(value));
      } catch (err) {
        if (cancelled) return;
        options.onCancel();
        controller.enqueue(encoder.encode(formatError(errorPayload(err).body)));
        controller.close();
      }
    },
    cancel,
  });
  return new Response(body, {
    headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" },
  });
}
