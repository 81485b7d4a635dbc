/**
 * The steady load: N clients, each sending seeded well-formed requests one after another until the deadline; a
 * share of the streaming ones hang up after a random number of chunks. Every end is counted, and every answer's
 * policy versions are checked against the refits that returned before it was sent.
 */
import type OpenAI from "openai";
import { Rng } from "../../src/engine/rng.ts";
import { send, wellFormed } from "./requests.ts";
import type { Tally } from "./tally.ts";

export interface LoadOptions {
  clients: number;
  seed: number;
  /** performance.now() after which no client sends again. */
  deadline: number;
  hangMs: number;
  maxTokens: number;
  /** Share of streaming requests that hang up midway. */
  hangUpShare: number;
}

/** Runs the clients; resolves once each has its last answer. */
export async function runLoad(client: OpenAI, tally: Tally, options: LoadOptions): Promise<void> {
  const one = async (index: number) => {
    const rng = Rng.fromSeed(options.seed * 100_003 + index);
    while (performance.now() < options.deadline) {
      const request = wellFormed(rng, options.maxTokens);
      const hangUpAfter = request.stream && rng.nextUniform() < options.hangUpShare
        ? 1 + Math.floor(rng.nextUniform() * 8)
        : null;
      const sent = await send(client, request, { hangMs: options.hangMs, hangUpAfter });
      tally.record("load", sent.outcome, `${request.asked.route}${request.stream ? " stream" : ""}: ${sent.detail}`);
      tally.checkVersions("load", sent.startedAt, sent.versions);
      // A moment between requests, as a rollout worker would take.
      await new Promise((r) => setTimeout(r, Math.floor(rng.nextUniform() * 50)));
    }
  };
  await Promise.all(Array.from({ length: options.clients }, (_, i) => one(i)));
}
