/**
 * A thread of the SamplerPool: it samples the rows of logits it is sent (in a shared buffer, each at its offset)
 * with the settings the engine resolved for each, and answers their tokens.
 */
import { parentPort } from "node:worker_threads";
import { Sampler } from "./sampler.ts";
import { fromWireRow, type SampleJob, type SampleReply, type WireRow, wireToken } from "./sampler-pool.ts";

const sampler = new Sampler();
parentPort!.on("message", (job: SampleJob) => {
  let reply: SampleReply;
  const transfer: ArrayBuffer[] = [];
  try {
    const { buffer, vocabSize, offsets, rows } = job;
    const sample = (row: WireRow, i: number) => sampler.sampleRow(new Float32Array(buffer, offsets[i], vocabSize), fromWireRow(row));
    reply = { tokens: rows.map((row, i) => wireToken(sample(row, i), transfer)) };
  } catch (err) {
    reply = { error: err instanceof Error ? err.message : String(err) };
  }
  parentPort!.postMessage(reply, transfer);
});
