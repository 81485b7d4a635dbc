/**
 * What the chaos test counts: every request's outcome, and the violations (answers that break the server's
 * promises). A request ends in exactly one outcome; a violation names its kind and keeps a few examples.
 */

/** How one request ended. The first five are acceptable; the rest are violations. */
export type Outcome =
  | "ok" // a well-formed 200 (or a stream that ended with its finish reasons)
  | "refused_4xx" // a malformed request refused with a 4xx in OpenAI's error shape
  | "unavailable_503" // 503 with Retry-After (queue full, a refit's abort, shutting down)
  | "retriable_abort" // a stream ended by the documented retriable error of an abort-mode refit or a shutdown
  | "hung_up" // we hung up ourselves, on purpose
  | "error_5xx" // any other 5xx, or a stream ended by an undocumented error
  | "connection_error" // the connection failed or was cut, not by us
  | "truncated" // a stream that ended without its finish reasons
  | "hang" // no answer within the hang timeout
  | "bad_shape" // a 200 whose body lacks what was asked for (choices, token ids, logprobs, usage)
  | "refused_valid" // a well-formed request refused with a 4xx
  | "malformed_accepted" // a malformed request that got a 2xx
  | "bad_error_shape"; // a 4xx whose body is not {error: {message, type, param, code}}

const ACCEPTABLE: ReadonlySet<Outcome> = new Set([
  "ok",
  "refused_4xx",
  "unavailable_503",
  "retriable_abort",
  "hung_up",
]);
const LOST: ReadonlySet<Outcome> = new Set(["error_5xx", "connection_error", "truncated", "hang"]);

/** The documented retriable errors that may end a stream: an abort-mode refit, and a shutdown. */
export function isRetriableStreamError(message: string): boolean {
  return /policy weights are being updated to version \d+; retry it/.test(message) || /shut(ting)? ?down/.test(message);
}

/** When a refit returned, and the version it made current. */
interface RefitMark {
  version: number;
  returnedAt: number;
}

/** The counters of one scenario (load, storm, slow, shutdown) or of the whole run. */
export class Counts {
  requests = 0;
  readonly outcomes: Partial<Record<Outcome, number>> = {};
  staleVersions = 0;

  add(outcome: Outcome): void {
    this.requests++;
    this.outcomes[outcome] = (this.outcomes[outcome] ?? 0) + 1;
  }

  of(outcome: Outcome): number {
    return this.outcomes[outcome] ?? 0;
  }

  /** Valid requests that got a 5xx, a cut connection, a truncated stream or no answer. */
  get lost(): number {
    return [...LOST].reduce((sum, o) => sum + this.of(o), 0);
  }

  /** Outcomes that break a promise, plus stale policy versions. */
  get violations(): number {
    const bad = Object.entries(this.outcomes).filter(([o]) => !ACCEPTABLE.has(o as Outcome));
    return bad.reduce((sum, [, n]) => sum + (n ?? 0), 0) + this.staleVersions;
  }

  figures(): Record<string, unknown> {
    return {
      requests: this.requests,
      ok: this.of("ok"),
      refused_4xx: this.of("refused_4xx"),
      unavailable_503: this.of("unavailable_503"),
      retriable_aborts: this.of("retriable_abort"),
      hung_up: this.of("hung_up"),
      errors_5xx: this.of("error_5xx"),
      lost: this.lost,
      hangs: this.of("hang"),
      stale_policy: this.staleVersions,
      outcomes: this.outcomes,
    };
  }
}

/** Every scenario's counts, the whole run's, the refit timeline and the first examples of each violation. */
export class Tally {
  readonly total = new Counts();
  readonly scenarios = new Map<string, Counts>();
  readonly examples: string[] = [];
  /** Violations that are not a request's outcome: seed mismatches, gauges, RSS, stalls, a failed refit. */
  readonly checks: Record<string, number> = {};
  readonly #refits: RefitMark[] = [];
  readonly #maxExamples: number;

  constructor(maxExamples = 30) {
    this.#maxExamples = maxExamples;
  }

  scenario(name: string): Counts {
    let counts = this.scenarios.get(name);
    if (!counts) this.scenarios.set(name, counts = new Counts());
    return counts;
  }

  /** Counts a request's outcome in its scenario and the total; a violation keeps `detail` as an example. */
  record(scenario: string, outcome: Outcome, detail = ""): void {
    this.scenario(scenario).add(outcome);
    this.total.add(outcome);
    if (!ACCEPTABLE.has(outcome)) this.example(`${scenario}: ${outcome}${detail ? `: ${detail}` : ""}`);
  }

  /** A violation found by a check of the whole server rather than of one answer. */
  fail(check: string, detail: string): void {
    this.checks[check] = (this.checks[check] ?? 0) + 1;
    this.example(`${check}: ${detail}`);
  }

  example(text: string): void {
    if (this.examples.length < this.#maxExamples) this.examples.push(text.slice(0, 500));
  }

  /** A refit returned at `returnedAt` (performance.now()) with `version` current. */
  refitReturned(version: number, returnedAt: number): void {
    this.#refits.push({ version, returnedAt });
  }

  /** The version every answer to a request sent at `startedAt` must carry at least. */
  versionAt(startedAt: number): number {
    let version = -1;
    for (const mark of this.#refits) if (mark.returnedAt <= startedAt) version = Math.max(version, mark.version);
    return version;
  }

  /** Checks that an answer started at `startedAt` carries no version older than the last refit before it. */
  checkVersions(scenario: string, startedAt: number, versions: readonly number[]): void {
    const floor = this.versionAt(startedAt);
    const oldest = Math.min(...versions);
    if (versions.length === 0 || oldest >= floor) return;
    this.scenario(scenario).staleVersions++;
    this.total.staleVersions++;
    this.example(`${scenario}: stale policy_version ${oldest} in an answer started after version ${floor} was served`);
  }

  /** Every violation: request outcomes, stale versions and failed checks. */
  get violations(): number {
    return this.total.violations + Object.values(this.checks).reduce((a, b) => a + b, 0);
  }
}
