/**
 * The engine benchmarks' load sent through HTTP: the same prompts (token ids), samples and sampling as runEngineLoad,
 * as /v1/completions requests with log-probabilities on (what an RL trainer asks for), to a server on loopback.
 */
import { CpuMeter } from "./meters.ts";

/** What one batch of requests through HTTP gave. */
export interface HttpLoadResult {
  seconds: number;
  /** Cores this (client) process and the rest of the machine, the server included, kept busy meanwhile. */
  cpu: ReturnType<CpuMeter["stop"]>;
  /** Generated tokens, from usage.completion_tokens. */
  generated: number;
  /** Generated tokens that came back with a log-probability; equal to `generated` or the run fails. */
  logprobTokens: number;
}

/** The sampling fields of a request body. */
export interface HttpSampling {
  temperature: number;
  max_tokens: number;
  ignore_eos: boolean;
}

/**
 * Sends one request per prompt with `n` samples (seed `seed` + prompt index, as runEngineLoad), all at once, and
 * waits for every response. Throws when a response is not 200 or lacks a token's log-probability.
 */
export async function runHttpLoad(
  base: string,
  model: string,
  prompts: readonly number[][],
  n: number,
  sampling: HttpSampling,
  seed: number,
): Promise<HttpLoadResult> {
  const meter = new CpuMeter().start();
  const t0 = performance.now();
  const responses = await Promise.all(prompts.map(async (prompt, p) => {
    const response = await fetch(`${base}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, prompt, n, seed: seed + p, logprobs: 1, ...sampling }),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`status ${response.status}: ${text.slice(0, 300)}`);
    return JSON.parse(text) as CompletionBody;
  }));
  const seconds = (performance.now() - t0) / 1000;
  let generated = 0;
  let logprobTokens = 0;
  for (const body of responses) {
    generated += body.usage.completion_tokens;
    for (const choice of body.choices) logprobTokens += choice.logprobs?.token_logprobs?.length ?? 0;
  }
  if (logprobTokens !== generated) {
    throw new Error(`${generated} tokens generated but ${logprobTokens} came with a log-probability`);
  }
  return { seconds, cpu: meter.stop(), generated, logprobTokens };
}

interface CompletionBody {
  usage: { completion_tokens: number };
  choices: { logprobs?: { token_logprobs?: number[] } }[];
}
