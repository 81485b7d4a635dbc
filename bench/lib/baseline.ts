/**
 * The baseline the engine is measured against: transformers.js's own model and generate() on the same model folder,
 * and how its figures are put beside the engine's.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { AutoModelForCausalLM, Tensor } from "@huggingface/transformers";
import { CpuMeter } from "./meters.ts";
import { median, round } from "./report.ts";

/** How a generate() baseline samples: top_k 0 is the engine's whole-vocabulary sampling. */
export function baselineVariant(topK: number): { baseline_top_k: number; baseline_sampling: string } {
  return {
    baseline_top_k: topK,
    baseline_sampling: topK === 0 ? "whole vocabulary, as the engine" : `top_k ${topK} (transformers.js default)`,
  };
}

/** A baseline's figures: the median of its runs' rates, and the engine's rate against it. */
export function baselineFigures(rates: number[], otherCores: (number | null)[], engineRate: number) {
  const rate = median(rates);
  return {
    runs: rates.length,
    tok_s: round(rate, 1),
    tok_s_runs: rates.map((r) => round(r, 1)),
    other_cores_runs: otherCores,
    engine_tok_s: round(engineRate, 1),
    engine_speedup: round(engineRate / rate, 2),
  };
}

/** Sampling options of the baseline, as generate() takes them. */
export interface BaselineSampling {
  temperature: number;
  /** 0: the whole vocabulary (what the engine samples from at top_k off); transformers.js defaults to 50. */
  topK: number;
}

/** transformers.js's own model and generate(): the baseline the engine is measured against. */
export class GenerateBaseline {
  private constructor(
    // deno-lint-ignore no-explicit-any
    readonly model: any,
    readonly padId: number,
  ) {}

  /** Loads the model folder's standard graph with transformers.js on onnxruntime-node's CPU provider. */
  static async open(dir: string): Promise<GenerateBaseline> {
    const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    const padId = config.pad_token_id ?? [config.eos_token_id].flat()[0];
    const model = await AutoModelForCausalLM.from_pretrained(dir, {
      local_files_only: true,
      device: "cpu",
      dtype: "fp32",
      // The threads the engine's sessions get: onnxruntime-node's own default ran one thread here.
      session_options: { intraOpNumThreads: os.availableParallelism() },
    });
    return new GenerateBaseline(model, padId);
  }

  /**
   * Generates exactly `newTokens` tokens for every prompt in one generate() call, the prompts left-padded to the
   * longest (a static batch: every row waits for the batch). Returns the seconds it took and the cores busy meanwhile.
   */
  async generate(
    prompts: readonly number[][],
    newTokens: number,
    sampling: BaselineSampling,
  ): Promise<{ seconds: number; cpu: ReturnType<CpuMeter["stop"]> }> {
    const width = Math.max(...prompts.map((p) => p.length));
    const ids = new BigInt64Array(prompts.length * width);
    const mask = new BigInt64Array(prompts.length * width);
    prompts.forEach((prompt, b) => {
      const pad = width - prompt.length;
      for (let i = 0; i < width; i++) {
        ids[b * width + i] = BigInt(i < pad ? this.padId : prompt[i - pad]);
        mask[b * width + i] = i < pad ? 0n : 1n;
      }
    });
    const meter = new CpuMeter().start();
    const t0 = performance.now();
    const output = await this.model.generate({
      input_ids: new Tensor("int64", ids, [prompts.length, width]),
      attention_mask: new Tensor("int64", mask, [prompts.length, width]),
      max_new_tokens: newTokens,
      // The engine's ignore_eos: end-of-sequence masked until the last token.
      min_new_tokens: newTokens,
      do_sample: sampling.temperature > 0,
      temperature: sampling.temperature,
      top_k: sampling.topK,
    });
    const seconds = (performance.now() - t0) / 1000;
    const cpu = meter.stop();
    const dims = (output as { dims: number[] }).dims;
    if (dims[0] !== prompts.length || dims[1] !== width + newTokens) {
      throw new Error(`generate() returned [${dims}], expected [${prompts.length}, ${width + newTokens}]`);
    }
    return { seconds, cpu };
  }

  async dispose(): Promise<void> {
    await this.model.dispose();
  }
}
