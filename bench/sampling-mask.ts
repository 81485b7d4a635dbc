/**
 * What a sampling mask (return_sampling_mask) costs per generated token on the tiny model, through HTTP: the same
 * seeded /inference/v1/generate request with and without the mask, interleaved round by round, at top_p 0.95 and 1.0
 * (and top_k 50 beside, the bound vLLM recommends). The tiny model's random weights give a nearly flat distribution,
 * so its nucleus is most of the vocabulary: the worst case for the mask's size. Beside it, the sampler alone: one
 * row of 151,936 logits (model-like and flat) with and without the kept set. One JSON line per case.
 * Run: node --import tsx bench/sampling-mask.ts [--rounds 5] [--tokens 16]
 */
import process from "node:process";
import { z } from "zod";
import { ServerConfig } from "../src/config.ts";
import { Rng } from "../src/engine/rng.ts";
import { type RowSampling, Sampler } from "../src/engine/sampler.ts";
import { silentLogger } from "../src/log.ts";
import { startServer } from "../src/server.ts";
import { benchFlags, intFlag } from "./lib/flags.ts";
import { median, report, round } from "./lib/report.ts";
import { flatRow, modelLikeRow } from "./logit-rows.ts";

const Flags = z.object({
  rounds: intFlag(5).describe("requests per case, the cases interleaved"),
  tokens: intFlag(16).describe("tokens generated per request"),
  rows: intFlag(100).describe("timed sampler calls per case"),
});
const { rounds, tokens, rows } = benchFlags(
  Flags,
  "Cost per token of return_sampling_mask on the tiny model through HTTP, and of the kept set in the sampler alone.\n" +
    "Run: node --import tsx bench/sampling-mask.ts [flags]",
);
const flags = { device: "cpu", preset: "tiny" };

// The sampler alone: the kept set is one more pass over the row and a copy of the ids.
for (const [shape, row] of [["model-like", modelLikeRow(1)], ["flat", flatRow(2)]] as const) {
  for (const cut of [{ topP: 0.95, topK: 0 }, { topP: 1, topK: 0 }, { topP: 0.95, topK: 50 }]) {
    const times = { off: [] as number[], on: [] as number[] };
    let size = 0;
    const sampler = new Sampler();
    const rng = Rng.fromSeed(3);
    for (let j = 0; j < 2 * (rows + 50); j++) {
      const keepSet = j % 2 === 1;
      const settings: RowSampling = {
        temperature: 1,
        minP: 0,
        uniform: rng.nextUniform(),
        topLogprobs: 0,
        logprobsMode: "processed",
        keepSet,
        ...cut,
      };
      const t0 = performance.now();
      const out = sampler.sampleRow(row, settings);
      const ms = performance.now() - t0;
      if (j < 100) continue;
      times[keepSet ? "on" : "off"].push(ms);
      if (out.kept) size = out.kept.length;
    }
    report(`sampler row, kept set (top_p ${cut.topP}${cut.topK ? `, top_k ${cut.topK}` : ""})`, flags, {
      logits: shape,
      mask_size: size,
      median_ms_without: round(median(times.off), 3),
      median_ms_with: round(median(times.on), 3),
    });
  }
}

const server = await startServer(
  ServerConfig.parse({
    port: 0,
    device: "cpu",
    cacheDir: process.env.GYM_EDGE_CACHE,
    maxModelLen: 512,
    logRequests: false,
  }),
  silentLogger,
);
await server.ready;
const base = `http://127.0.0.1:${server.port}`;

/** One request: wall time, tokens, response bytes, mean mask size. */
async function generate(cut: Record<string, number>, mask: boolean, seed: number) {
  const body = {
    token_ids: [9707, 1879, 11, 847, 829, 374],
    return_sampling_mask: mask,
    sampling_params: { temperature: 1, max_tokens: tokens, ignore_eos: true, seed, logprobs: 0, ...cut },
  };
  const t0 = performance.now();
  const res = await fetch(`${base}/inference/v1/generate`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  const ms = performance.now() - t0;
  if (res.status !== 200) throw new Error(text);
  const choice = JSON.parse(text).choices[0];
  const masks: number[][] = choice.sampling_mask ?? [];
  return {
    ms,
    tokens: choice.token_ids.length,
    bytes: text.length,
    maskSize: masks.reduce((a, m) => a + m.length, 0) / Math.max(1, masks.length),
  };
}

const cuts: Record<string, number>[] = [{ top_p: 0.95 }, { top_p: 1 }, { top_p: 0.95, top_k: 50 }];
// One untimed request of each kind first.
for (const cut of cuts) for (const mask of [false, true]) await generate(cut, mask, 1);
for (const cut of cuts) {
  const per = { off: [] as number[], on: [] as number[] };
  const bytes = { off: 0, on: 0 };
  let size = 0;
  for (let r = 0; r < rounds; r++) {
    // Interleaved, the same seed both ways: the same tokens, only the mask differs.
    for (const mask of r % 2 === 0 ? [false, true] : [true, false]) {
      const out = await generate(cut, mask, 100 + r);
      per[mask ? "on" : "off"].push(out.ms / out.tokens);
      bytes[mask ? "on" : "off"] = out.bytes / out.tokens;
      if (mask) size = out.maskSize;
    }
  }
  report(`generate per token, sampling mask (${Object.entries(cut).map(([k, v]) => `${k} ${v}`).join(", ")})`, flags, {
    tokens_per_request: tokens,
    rounds,
    mask_size: Math.round(size),
    ms_per_token_without: round(median(per.off)),
    ms_per_token_with: round(median(per.on)),
    response_bytes_per_token_without: Math.round(bytes.off),
    response_bytes_per_token_with: Math.round(bytes.on),
  });
}
await server.close();
