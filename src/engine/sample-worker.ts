/**
 * A thread of the SamplerPool: it samples the rows of logits it is sent (in a shared buffer, each at its offset)
 * with the settings the engine resolved for each, and answers their tokens.
 */
import { parentPort } from "node:worker_threads";
import { fromWire, toWire } from "../runtime/wire.ts";
import { type RowSampling, type SampledToken, Sampler } from "./sampler.ts";

/** One batch of rows: row i is `vocabSize` floats of `buffer` from byte `offsets[i]`. */
export interface SampleJob {
  buffer: SharedArrayBuffer;
  vocabSize: number;
  offsets: number[];
  rows: RowSampling[];
}

/** The answer to a job. */
export type SampleReply = { tokens: SampledToken[] } | { error: string };

const sampler = new Sampler();
parentPort!.on("message", (message: SampleJob) => {
  const job = fromWire(message) as SampleJob;
  let reply: SampleReply;
  try {
    const { buffer, vocabSize, offsets, rows } = job;
    reply = { tokens: rows.map((row, i) => sampler.sampleRow(new Float32Array(buffer, offsets[i], vocabSize), row)) };
  } catch (err) {
    reply = { error: err instanceof Error ? err.message : String(err) };
  }
  const moved: ArrayBuffer[] = [];
  parentPort!.postMessage(toWire(reply, moved), moved);
});
