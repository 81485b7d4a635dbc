/**
 * Multi-turn time to first token: an 8-turn conversation (each turn appends a ~120-token user message and the
 * model's ~80-token answer, ~200 tokens a turn) sent turn by turn, as an agent rollout resends its whole history.
 * Measures the time to first token of the last turn with prefix caching and without (a second engine with
 * prefix caching off: the baseline). Each run is a new conversation (its own seed), so runs do not hit each
 * other's cache; prints one JSON line per engine with the medians of `runs`, then the speed-up.
 * Run: node --import tsx bench/multi-turn.ts [--runs 3] [--turns 8] [--user-tokens 120] [--answer-tokens 80]
 *      [--max-num-batched-tokens 512] [--device cpu|wasm|webgpu [--host-cache]] [--cache-dir DIR]
 */
import { SamplingParams } from "../src/engine/sampling-params.ts";
import type { Engine } from "../src/engine/engine.ts";
import { Rng } from "../src/engine/rng.ts";
import { type BenchEngine, benchModel, openBenchEngine } from "./lib/engine.ts";
import { EngineBenchFlags } from "./lib/engine-flags.ts";
import { benchFlags, intFlag } from "./lib/flags.ts";
import { CpuMeter } from "./lib/meters.ts";
import { randomTokens } from "./lib/prompts.ts";
import { median, report, round } from "./lib/report.ts";

const MultiTurnFlags = EngineBenchFlags.extend({
  turns: intFlag(8).describe("turns of the conversation"),
  userTokens: intFlag(120).describe("tokens of each user message"),
  answerTokens: intFlag(80).describe("tokens of each answer"),
});

const flags = benchFlags(
  MultiTurnFlags,
  "Time to first token of a conversation's last turn, with prefix caching and without.\n" +
    "Run: node --import tsx bench/multi-turn.ts [flags]",
);
const { turns, userTokens, answerTokens } = flags;
// Qwen3's <|im_end|>, newline, <|im_start|>: what the chat template puts between messages.
const TURN_BREAK = [151645, 198, 151644];

const dir = await benchModel(flags);

/** One request through the engine: its first-token time (ms) and its tokens. */
async function generate(engine: Engine, prompt: number[], maxTokens: number, seed: number) {
  const t0 = performance.now();
  const request = engine.submit(prompt, SamplingParams.parse({ temperature: 1, max_tokens: maxTokens, ignore_eos: true, seed }));
  let ttftMs = 0;
  const tokens: number[] = [];
  for await (const event of request.events) {
    if (tokens.length === 0) ttftMs = performance.now() - t0;
    tokens.push(event.tokenId);
  }
  return { ttftMs, tokens };
}

/**
 * Plays one conversation; returns the first-token time of each turn, the last turn's prompt length and where the
 * last turn's time to first token went.
 */
async function conversation(bench: BenchEngine, seed: number) {
  const { engine } = bench;
  const rng = Rng.fromSeed(seed);
  // A system prompt, then turns of user message + answer; each turn's prompt is the whole history so far.
  let history = randomTokens(rng, 40);
  const ttfts: number[] = [];
  for (let turn = 0; turn < turns; turn++) {
    const prompt = [...history, ...TURN_BREAK, ...randomTokens(rng, userTokens), ...TURN_BREAK];
    const last = turn === turns - 1;
    bench.profile.clear();
    // The last turn only needs its first token.
    const { ttftMs, tokens } = await generate(engine, prompt, last ? 1 : answerTokens, seed * 100 + turn);
    ttfts.push(ttftMs);
    history = [...prompt, ...tokens];
    if (last) return { ttfts, lastPromptTokens: prompt.length, lastTurn: bench.profile.summary(ttftMs, 1) };
  }
  throw new Error("no turns");
}

async function measure(prefixCaching: boolean) {
  const bench: BenchEngine = await openBenchEngine(dir, flags, { prefixCaching });
  try {
    await conversation(bench, 999); // warm-up, not measured
    const lastTurn: number[] = [];
    const profiles: Record<string, unknown>[] = [];
    const otherCores: (number | null)[] = [];
    const firstTurn: number[] = [];
    let lastPromptTokens = 0;
    const before = bench.engine.stats().cache;
    for (let run = 0; run < flags.runs; run++) {
      const meter = new CpuMeter().start();
      const result = await conversation(bench, run + 1);
      profiles.push(result.lastTurn);
      otherCores.push(meter.stop().other_cores);
      lastTurn.push(result.ttfts.at(-1)!);
      firstTurn.push(result.ttfts[0]);
      lastPromptTokens = result.lastPromptTokens;
      console.error(`prefix caching ${prefixCaching}, run ${run}: ttft per turn ${result.ttfts.map((t) => round(t, 0))} ms`);
    }
    const after = bench.engine.stats().cache;
    const ttft = median(lastTurn);
    report("multi_turn_ttft", flags, {
      engine: "gym-edge",
      prefix_caching: prefixCaching,
      turns,
      tokens_per_turn: userTokens + answerTokens + 2 * TURN_BREAK.length,
      last_turn_prompt_tokens: lastPromptTokens,
      runs: flags.runs,
      last_turn_ttft_ms: round(ttft, 0),
      last_turn_ttft_ms_runs: lastTurn.map((t) => round(t, 0)),
      other_cores_runs: otherCores,
      first_turn_ttft_ms: round(median(firstTurn), 0),
      // model runs, row-buffer resizes and the rest, of the run with the median last-turn time
      last_turn_profile: profiles[lastTurn.indexOf(ttft)],
      prefix_cache_hit_tokens: after.hitTokens - before.hitTokens,
      prefix_cache_queried_tokens: after.queriedTokens - before.queriedTokens,
      max_num_batched_tokens: flags.maxNumBatchedTokens,
    });
    return { ttft, lastPromptTokens };
  } finally {
    await bench.close();
  }
}

const cached = await measure(true);
const uncached = await measure(false);
report("multi_turn_speedup", flags, {
  turns,
  last_turn_prompt_tokens: cached.lastPromptTokens,
  ttft_ms_prefix_caching: round(cached.ttft, 0),
  ttft_ms_no_prefix_caching: round(uncached.ttft, 0),
  speedup: round(uncached.ttft / cached.ttft, 2),
});
