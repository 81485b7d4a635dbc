/**
 * Weight updates under load, and the seeded requests that tell whether weights came back exactly: every 10-20 s a
 * refit in the next mode (abort, pause, finish) to the other weight folder with a larger policy_version; after each,
 * a fixed set of seeded and greedy requests whose tokens must equal those recorded the first time those weights
 * served (right after start, or after the first refit to them), and those of a fresh server on them.
 */
import type OpenAI from "openai";
import { Rng } from "../../src/engine/rng.ts";
import type { Asked, Json } from "./shapes.ts";
import { send, type Sent } from "./requests.ts";
import type { Spans } from "./slow.ts";
import type { Tally } from "./tally.ts";

// Abort and pause first: they return at once, so even a short run sees them; finish waits for the requests in flight.
const MODES = ["abort", "pause", "finish"] as const;

const asked = (route: Asked["route"], choices = 1): Asked => ({
  route,
  choices,
  topLogprobs: 0,
  returnTokenIds: route === "completions",
  includeUsage: false,
});

/** Seeded (temperature 1 with a seed) and greedy requests: the same weights must give the same tokens. */
const SEEDED = [
  {
    asked: asked("completions"),
    stream: false,
    body: {
      prompt: [9707, 1879, 11, 576, 3000],
      max_tokens: 12,
      temperature: 1,
      seed: 1234,
      ignore_eos: true,
      logprobs: 0,
      return_token_ids: true,
    },
  },
  {
    asked: asked("chat"),
    stream: false,
    body: {
      messages: [{ role: "user", content: "a greedy question" }],
      max_tokens: 10,
      temperature: 0,
      ignore_eos: true,
      logprobs: true,
      top_logprobs: 0,
    },
  },
  {
    asked: asked("chat", 2),
    stream: false,
    body: {
      messages: [{ role: "user", content: "two seeded answers" }],
      max_tokens: 8,
      temperature: 1,
      seed: 77,
      n: 2,
      ignore_eos: true,
      logprobs: true,
      top_logprobs: 0,
    },
  },
  {
    asked: asked("responses"),
    stream: false,
    body: { input: "a seeded response", max_output_tokens: 8, temperature: 1, seed: 5 },
  },
];

/** The sampled ids and log-probabilities of each choice of a seeded answer. */
type Fingerprint = { ids: number[]; logprobs: number[] }[];

function fingerprint(route: Asked["route"], body: Json): Fingerprint {
  if (route === "responses") {
    const last = body.output[body.output.length - 1];
    return [{ ids: last.generation_token_ids, logprobs: last.generation_log_probs }];
  }
  return body.choices.map((c: Json) =>
    route === "chat"
      ? { ids: c.message.generation_token_ids, logprobs: c.message.generation_log_probs }
      : { ids: c.token_ids, logprobs: c.logprobs.token_logprobs }
  );
}

/** Seeded answers recorded per weight folder, and how far later ones were from them. */
export class SeedBook {
  readonly references = new Map<string, Fingerprint[]>();
  compared = 0;
  mismatches = 0;
  /** Checks given up or cut short (over budget, a 503 to the end, an error counted elsewhere). */
  skipped = 0;
  maxLogprobDiff = 0;

  /**
   * Sends the seeded requests together (each retrying 503s) and compares them with `weights`' first answers, or
   * records them. The caller makes sure no refit runs meanwhile: tokens from two weights would differ rightly. With
   * `budgetMs`, a check that has not finished by then is given up (`skipped`), so that refits keep their pace under
   * overload.
   */
  async check(
    client: OpenAI,
    tally: Tally,
    weights: string,
    label: string,
    hangMs: number,
    budgetMs?: number,
  ): Promise<void> {
    const giveUp = budgetMs === undefined ? undefined : AbortSignal.timeout(budgetMs);
    const sent = await Promise.all(SEEDED.map(async (request) => {
      let result: Sent = await send(client, request, { hangMs, giveUp });
      for (let retry = 0; result.outcome === "unavailable_503" && retry < 20 && !giveUp?.aborted; retry++) {
        await new Promise((r) => setTimeout(r, 1000));
        result = await send(client, request, { hangMs, giveUp });
      }
      tally.record("seeds", result.outcome, `${label}: ${request.asked.route}: ${result.detail}`);
      return result;
    }));
    if (sent.some((result) => result.outcome !== "ok")) {
      this.skipped++;
      return;
    }
    const answers = sent.map((result, r) => fingerprint(SEEDED[r].asked.route, result.body));
    const reference = this.references.get(weights);
    if (!reference) {
      this.references.set(weights, answers);
      return;
    }
    for (const [r, answer] of answers.entries()) {
      this.compared++;
      const sameIds = JSON.stringify(answer.map((c) => c.ids)) === JSON.stringify(reference[r].map((c) => c.ids));
      let diff = 0;
      for (const [c, choice] of answer.entries()) {
        for (const [j, lp] of choice.logprobs.entries()) {
          diff = Math.max(diff, Math.abs(lp - (reference[r][c]?.logprobs[j] ?? Infinity)));
        }
      }
      this.maxLogprobDiff = Math.max(this.maxLogprobDiff, Number.isFinite(diff) ? diff : 0);
      if (!sameIds || diff > 1e-3) {
        this.mismatches++;
        tally.fail(
          "seed_mismatch",
          `${label}: seeded request ${r} (${SEEDED[r].asked.route}) on ${weights}: ` +
            `${JSON.stringify(answer.map((c) => c.ids))} vs first ${
              JSON.stringify(reference[r].map((c) => c.ids))
            }, logprob diff ${diff}`,
        );
      }
    }
  }
}

export interface RefitOptions {
  /** The served weights and the other folder (null: refit to the served weights again). */
  weights: [string, string | null];
  seed: number;
  deadline: number;
  hangMs: number;
  /** Seconds between refits: a random value in [min, max]. */
  everyS: [number, number];
  startVersion: number;
  /** Longest the seeded check after a refit may take before it is given up. */
  seededBudgetMs: number;
}

/** What one refit did. */
export interface RefitRecord {
  mode: string;
  policy_version: number;
  status: number;
  ms: number;
  aborted?: number;
  preempted?: number;
  load_ms?: number;
  swap_ms?: number;
  /** How long the seeded requests after it took (the next refit waits for them). */
  seeded_check_ms?: number;
}

/** Refits until the deadline, each followed by the seeded check; `spans` marks the refits. */
export async function runRefits(
  base: string,
  client: OpenAI,
  tally: Tally,
  book: SeedBook,
  spans: Spans,
  options: RefitOptions,
) {
  const rng = Rng.fromSeed(options.seed * 13 + 5);
  const records: RefitRecord[] = [];
  let version = options.startVersion;
  let current = options.weights[0];
  // Refits start every 10-20 s (counted from the last one's start), and never while the seeded check runs.
  let nextAt = performance.now();
  for (let i = 0;; i++) {
    const [lo, hi] = options.everyS;
    nextAt += (lo + rng.nextUniform() * (hi - lo)) * 1000;
    if (Math.max(nextAt, performance.now()) > options.deadline - 2000) break;
    await new Promise((r) => setTimeout(r, Math.max(0, nextAt - performance.now())));
    const mode = MODES[i % MODES.length];
    const weights = options.weights[1] === null ? options.weights[0] : options.weights[(i + 1) % 2]!;
    const wanted = version + 1 + (i % 2);
    spans.begin();
    const started = performance.now();
    let status = 0;
    let json: Json = null;
    try {
      const res = await fetch(`${base}/update_weights`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ path: weights, mode, policy_version: wanted }),
        signal: AbortSignal.timeout(options.hangMs * 2),
      });
      status = res.status;
      json = await res.json().catch(() => null);
    } catch (err) {
      json = { error: String(err) };
    }
    const returnedAt = performance.now();
    spans.end();
    const record: RefitRecord = { mode, policy_version: wanted, status, ms: Math.round(returnedAt - started) };
    records.push(record);
    if (status !== 200 || json?.policy_version !== wanted) {
      tally.fail("refit_failed", `${mode} to version ${wanted}: ${status} ${JSON.stringify(json).slice(0, 300)}`);
      continue;
    }
    Object.assign(record, {
      aborted: json.aborted,
      preempted: json.preempted,
      load_ms: json.load_ms,
      swap_ms: json.swap_ms,
    });
    version = wanted;
    current = weights;
    tally.refitReturned(version, returnedAt);
    const label = `after refit ${i + 1} (${mode}, version ${version})`;
    await book.check(client, tally, weights, label, options.hangMs, options.seededBudgetMs);
    record.seeded_check_ms = Math.round(performance.now() - returnedAt);
  }
  return { records, version, weights: current };
}
