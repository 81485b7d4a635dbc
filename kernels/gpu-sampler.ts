/**
 * The WebGPU twin of the sampler: rows of float32 logits that live on the GPU ([rows, vocab] in one buffer, as a
 * model's output leaves them) -> one token per row, with the log-probabilities the CPU twin (kernels/sampling.ts)
 * gives. One step is one submission: the logits processors' edits (logit-edits.wgsl, in place), then one
 * workgroup per row (sample-rows.wgsl) for max, top-k, top-p, min-p, the draw and the top-N; a raw-mode row also
 * gets a pass over its logits before the edits. A row's allowed mask (RowSampling.allowed) travels in one more
 * buffer, bound to a second build of the sampling kernel only in calls where some row has one or asks for its kept
 * set: the mask turns the forbidden tokens' logits to -inf as the kernel reads them, and the kept set comes back
 * there as a bitmask of the vocabulary. Only OUT_WORDS words per row come back; the host computes
 * (l - max) / T - ln Z in float64 from them, as the CPU twin does (sample-record.ts).
 *
 * Agreement with the CPU twin: the same ranking, cuts and ties (integer keys, lowest id first), the same token for
 * the same uniform number unless u * Z falls within float32 rounding (~1e-7 relative) of a token's boundary, and
 * log-probabilities within ~1e-6. Weights below 2^-40 of the top token's (exp(x) under ~1e-12) count as 0 on the
 * GPU, where the CPU keeps them down to e^-104: their tokens can be drawn there with probability below 1e-7.
 */
import type { RowSampling, SampledToken } from "./row-sampling.ts";
import { OUT_WORDS, readRecord } from "./sample-record.ts";
import { COPY_DST, COPY_SRC, kernelPipeline, MAP_MODE_READ, MAP_READ, STORAGE, UNIFORM } from "./webgpu.ts";

/** The most top log-probabilities a row may ask for (the kernel's record has room for these). */
export const GPU_MAX_TOP = 20;
const ROW_WORDS = 16;
/** Words of one logit edit (edit-record.wgsl's Edit). */
const EDIT_WORDS = 8;
const WORKGROUP = 256;
const MAX_GROUPS = 65_535;
/** Token ids are radix-selected on 24 bits. */
const MAX_VOCAB = 1 << 24;
const TWO_POW_32 = 4294967296;

/** How one row is sampled: a RowSampling, and which row of the logits buffer it reads. */
export interface GpuSampleRow extends RowSampling {
  /** Row of the logits buffer to read (default: the row's index in the call). */
  logitsRow?: number;
}

/** Options of a GpuSampler. */
export interface GpuSamplerOptions {
  vocabSize: number;
  /** Most rows one call samples (default 256). */
  maxRows?: number;
}

/** Samples rows of logits on a GPUDevice; calls run one at a time. */
export class GpuSampler {
  readonly vocabSize: number;
  readonly maxRows: number;
  readonly #device: GPUDevice;
  readonly #sample: GPUComputePipeline;
  readonly #edit: GPUComputePipeline;
  readonly #shape: GPUBuffer;
  readonly #editCount: GPUBuffer;
  // Parameters and records of the raw pass and of the sampling pass.
  readonly #rawRows: GPUBuffer;
  readonly #rows: GPUBuffer;
  readonly #rawOut: GPUBuffer;
  readonly #out: GPUBuffer;
  readonly #readback: GPUBuffer;
  #edits: GPUBuffer;
  #upload: GPUBuffer | null = null;
  // The rows' allowed masks and kept sets, and the sampling kernel that uses them (compiled on first use).
  #rowWords: GPUBuffer | null = null;
  #keptReadback: GPUBuffer | null = null;
  #sampleWithWords: Promise<GPUComputePipeline> | null = null;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(device: GPUDevice, sample: GPUComputePipeline, edit: GPUComputePipeline, options: GpuSamplerOptions) {
    this.#device = device;
    this.#sample = sample;
    this.#edit = edit;
    this.vocabSize = options.vocabSize;
    this.maxRows = options.maxRows ?? 256;
    const buffer = (size: number, usage: number, label: string) => device.createBuffer({ size, usage, label });
    this.#shape = buffer(16, UNIFORM | COPY_DST, "sampler shape");
    this.#editCount = buffer(16, UNIFORM | COPY_DST, "sampler edit count");
    const rowBytes = this.maxRows * ROW_WORDS * 4;
    const outBytes = this.maxRows * OUT_WORDS * 4;
    this.#rawRows = buffer(rowBytes, STORAGE | COPY_DST, "sampler raw rows");
    this.#rows = buffer(rowBytes, STORAGE | COPY_DST, "sampler rows");
    this.#rawOut = buffer(outBytes, STORAGE | COPY_SRC, "sampler raw records");
    this.#out = buffer(outBytes, STORAGE | COPY_SRC, "sampler records");
    this.#readback = buffer(2 * outBytes, MAP_READ | COPY_DST, "sampler readback");
    this.#edits = buffer(1024 * EDIT_WORDS * 4, STORAGE | COPY_DST, "sampler edits");
    device.queue.writeBuffer(this.#shape, 0, Uint32Array.of(this.vocabSize, this.maxRows, 0, 0));
  }

  /** Compiles the kernels for `device`. */
  static async create(device: GPUDevice, options: GpuSamplerOptions): Promise<GpuSampler> {
    const { vocabSize } = options;
    if (!Number.isInteger(vocabSize) || vocabSize < 1 || vocabSize > MAX_VOCAB) {
      throw new RangeError(`vocabulary of ${vocabSize} tokens: the GPU sampler takes 1 to ${MAX_VOCAB}`);
    }
    const maxRows = options.maxRows ?? 256;
    if (!Number.isInteger(maxRows) || maxRows < 1 || maxRows > MAX_GROUPS) {
      throw new RangeError(`maxRows ${maxRows} is not in 1..${MAX_GROUPS}`);
    }
    const [sample, edit] = await Promise.all([
      kernelPipeline(device, ["edit-record.wgsl", "row-words-off.wgsl", "sample-rows.wgsl"], "sample rows"),
      kernelPipeline(device, ["edit-record.wgsl", "logit-edits.wgsl"], "logit edits"),
    ]);
    return new GpuSampler(device, sample, edit, options);
  }

  /**
   * Samples one token per entry of `rows` from `logits` (a STORAGE buffer of float32 [rows, vocabSize]); the
   * rows that have edits are modified in place.
   */
  sample(logits: GPUBuffer, rows: readonly GpuSampleRow[]): Promise<SampledToken[]> {
    const run = this.#queue.then(() => this.#run(logits, logits.size, rows));
    this.#queue = run.catch(() => {});
    return run;
  }

  /** Uploads rows of logits (each vocabSize long, or one array of them back to back) and samples them. */
  sampleArrays(logits: Float32Array | readonly Float32Array[], rows: readonly GpuSampleRow[]): Promise<SampledToken[]> {
    const parts = logits instanceof Float32Array ? [logits] : logits;
    const floats = parts.reduce((sum, p) => sum + p.length, 0);
    if (floats % this.vocabSize !== 0) throw new RangeError(`${floats} logits are not whole rows of ${this.vocabSize}`);
    const run = this.#queue.then(() => {
      const buffer = this.#uploadBuffer(floats * 4);
      let offset = 0;
      for (const part of parts) {
        this.#device.queue.writeBuffer(buffer, offset, part.buffer, part.byteOffset, part.byteLength);
        offset += part.byteLength;
      }
      return this.#run(buffer, floats * 4, rows);
    });
    this.#queue = run.catch(() => {});
    return run;
  }

  /** Releases the sampler's buffers. */
  destroy(): void {
    for (const b of [this.#shape, this.#editCount, this.#rawRows, this.#rows, this.#rawOut, this.#out, this.#readback, this.#edits]) {
      b.destroy();
    }
    this.#upload?.destroy();
    this.#rowWords?.destroy();
    this.#keptReadback?.destroy();
  }

  // `bytes`: how much of `logits` holds rows.
  async #run(logits: GPUBuffer, bytes: number, rows: readonly GpuSampleRow[]): Promise<SampledToken[]> {
    const count = rows.length;
    if (count === 0) return [];
    if (count > this.maxRows) throw new RangeError(`${count} rows is more than this sampler's ${this.maxRows}`);
    const device = this.#device;
    const plan = this.#plan(rows, bytes);
    const sample = plan.words.length > 0 ? await this.#wordsPipeline() : this.#sample;
    const rowWords = plan.words.length > 0 ? this.#ensureRowWords(plan.words.length) : null;
    if (rowWords) device.queue.writeBuffer(rowWords, 0, plan.words);
    device.queue.writeBuffer(this.#rows, 0, plan.params);
    if (plan.anyRaw) device.queue.writeBuffer(this.#rawRows, 0, plan.rawParams);
    if (plan.editCount > 0) {
      this.#ensureEdits(plan.editCount);
      device.queue.writeBuffer(this.#edits, 0, plan.edits, 0, plan.editCount * EDIT_WORDS);
      device.queue.writeBuffer(this.#editCount, 0, Uint32Array.of(plan.editCount, 0, 0, 0));
    }
    const limit = device.limits.maxStorageBufferBindingSize;
    if (plan.logitsBytes > limit) {
      throw new RangeError(`${plan.logitsBytes} bytes of logits is over this device's binding limit of ${limit}`);
    }
    // A validation error would otherwise leave the previous call's records in the readback buffer.
    device.pushErrorScope("validation");
    const logitsBinding = { buffer: logits, offset: 0, size: plan.logitsBytes };
    const sampleGroup = (params: GPUBuffer, out: GPUBuffer) =>
      device.createBindGroup({
        layout: sample.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer: this.#shape } },
          { binding: 1, resource: logitsBinding },
          { binding: 2, resource: { buffer: params } },
          { binding: 3, resource: { buffer: this.#edits } },
          { binding: 4, resource: { buffer: out } },
          ...(rowWords ? [{ binding: 5, resource: { buffer: rowWords } }] : []),
        ],
      });
    const encoder = device.createCommandEncoder({ label: "sample rows" });
    const pass = encoder.beginComputePass();
    pass.setPipeline(sample);
    if (plan.anyRaw) {
      // The model's own logits, before the edits below change them.
      pass.setBindGroup(0, sampleGroup(this.#rawRows, this.#rawOut));
      pass.dispatchWorkgroups(count);
    }
    if (plan.editCount > 0) {
      pass.setPipeline(this.#edit);
      pass.setBindGroup(
        0,
        device.createBindGroup({
          layout: this.#edit.getBindGroupLayout(0),
          entries: [
            { binding: 0, resource: { buffer: this.#editCount } },
            { binding: 1, resource: logitsBinding },
            { binding: 2, resource: { buffer: this.#edits } },
          ],
        }),
      );
      const groups = Math.ceil(plan.editCount / WORKGROUP);
      pass.dispatchWorkgroups(Math.min(groups, MAX_GROUPS), Math.ceil(groups / MAX_GROUPS));
      pass.setPipeline(sample);
    }
    pass.setBindGroup(0, sampleGroup(this.#rows, this.#out));
    pass.dispatchWorkgroups(count);
    pass.end();
    const recordBytes = count * OUT_WORDS * 4;
    encoder.copyBufferToBuffer(this.#out, 0, this.#readback, 0, recordBytes);
    if (plan.anyRaw) encoder.copyBufferToBuffer(this.#rawOut, 0, this.#readback, recordBytes, recordBytes);
    const keptBytes = (plan.words.length - plan.keptFrom) * 4;
    const keptReadback = keptBytes > 0 ? this.#ensureKeptReadback(keptBytes) : null;
    if (keptReadback) encoder.copyBufferToBuffer(rowWords!, plan.keptFrom * 4, keptReadback, 0, keptBytes);
    device.queue.submit([encoder.finish()]);
    const error = await device.popErrorScope();
    if (error) throw new Error(`GPU sampling failed: ${error.message}`);
    await this.#readback.mapAsync(MAP_MODE_READ, 0, 2 * recordBytes);
    const words = new Uint32Array(this.#readback.getMappedRange(0, 2 * recordBytes).slice(0));
    this.#readback.unmap();
    const tokens = rows.map((row, r) => readRecord(row, words, r, count));
    if (rows.some((row) => row.keepSet)) {
      let kept: Uint32Array | null = null;
      if (keptReadback) {
        await keptReadback.mapAsync(MAP_MODE_READ, 0, keptBytes);
        kept = new Uint32Array(keptReadback.getMappedRange(0, keptBytes).slice(0));
        keptReadback.unmap();
      }
      rows.forEach((row, r) => {
        if (!row.keepSet) return;
        const at = plan.keptAt[r];
        const allMasked = (words[r * OUT_WORDS + 2] & 1) !== 0;
        const alone = at < 0 || allMasked;
        tokens[r].kept = alone ? Int32Array.of(tokens[r].tokenId) : idsOf(kept!, at - plan.keptFrom, this.vocabSize);
      });
    }
    return tokens;
  }

  // Both passes' row parameters and the edits, packed as the kernels read them.
  #plan(rows: readonly GpuSampleRow[], bufferBytes: number) {
    const n = this.vocabSize;
    const params = new ArrayBuffer(rows.length * ROW_WORDS * 4);
    const rawParams = new ArrayBuffer(rows.length * ROW_WORDS * 4);
    const [u32, f32] = [new Uint32Array(params), new Float32Array(params)];
    const [rawU32, rawF32] = [new Uint32Array(rawParams), new Float32Array(rawParams)];
    const editCount = rows.reduce((sum, row) => sum + (row.edits?.length ?? 0), 0);
    const editBuffer = new ArrayBuffer(editCount * EDIT_WORDS * 4);
    const [editU32, editF32] = [new Uint32Array(editBuffer), new Float32Array(editBuffer)];
    // Each masked row's mask: ceil(n / 32) words, missing ones 0 (nothing allowed); then the kept sets asked for,
    // as many words each (greedy rows keep the argmax alone: nothing to write).
    const maskWords = Math.ceil(n / 32);
    const masked = rows.filter((row) => row.allowed).length;
    const keptFrom = masked * maskWords;
    const keptAt = rows.map(() => -1);
    let keptCount = 0;
    rows.forEach((row, r) => {
      if (row.keepSet && row.temperature !== 0) keptAt[r] = keptFrom + maskWords * keptCount++;
    });
    const words = new Uint32Array(keptFrom + keptCount * maskWords);
    let m = 0;
    let anyRaw = false;
    let lastRow = 0;
    let e = 0;
    rows.forEach((row, r) => {
      const logitsRow = row.logitsRow ?? r;
      checkRow(row, logitsRow, n);
      lastRow = Math.max(lastRow, logitsRow);
      const raw = row.logprobsMode === "raw";
      const top = row.topLogprobs ?? 0;
      const greedy = row.temperature === 0;
      const at = r * ROW_WORDS;
      u32[at] = logitsRow;
      u32[at + 1] = greedy ? 1 : 2;
      f32[at + 2] = greedy ? 1 : 1 / row.temperature;
      u32[at + 3] = row.minP > 0 ? 1 : 0;
      f32[at + 4] = row.minP > 0 ? Math.log(row.minP) : 0;
      u32[at + 5] = row.topK > 0 && row.topK < n ? row.topK : 0;
      // Rounded down: when the kept weight times top_p is a whole number of tied tokens, the CPU reaches it exactly.
      u32[at + 6] = row.topP < 1 ? Math.max(1, Math.floor(row.topP * TWO_POW_32)) : 0;
      u32[at + 7] = Math.min(TWO_POW_32 - 1, Math.floor(row.uniform * TWO_POW_32));
      u32[at + 8] = raw ? 0 : top;
      u32[at + 9] = e;
      for (const edit of row.edits ?? []) {
        const w = e * EDIT_WORDS;
        editU32[w] = logitsRow * n + edit.tokenId;
        editU32[w + 1] = (edit.mask ? 1 : 0) | (edit.repetition !== 1 ? 2 : 0);
        editF32[w + 2] = edit.bias;
        editF32[w + 3] = edit.repetition;
        editF32[w + 4] = edit.subtract;
        e++;
      }
      u32[at + 10] = e;
      if (row.allowed) {
        const mask = row.allowed.length > maskWords ? row.allowed.subarray(0, maskWords) : row.allowed;
        words.set(mask, m * maskWords);
        u32[at + 11] = 1 + m * maskWords;
        m++;
      }
      if (keptAt[r] >= 0) u32[at + 12] = 1 + keptAt[r];
      if (raw) {
        anyRaw = true;
        rawU32[at] = logitsRow;
        rawU32[at + 1] = 1;
        rawF32[at + 2] = 1;
        rawU32[at + 8] = top;
      }
    });
    const logitsBytes = (lastRow + 1) * n * 4;
    if (logitsBytes > bufferBytes) {
      throw new RangeError(`logits row ${lastRow} is past the ${bufferBytes / (n * 4)} rows of the logits buffer`);
    }
    return { params, rawParams, anyRaw, edits: editU32, editCount, words, keptFrom, keptAt, logitsBytes };
  }

  #wordsPipeline(): Promise<GPUComputePipeline> {
    return this.#sampleWithWords ??= kernelPipeline(
      this.#device,
      ["edit-record.wgsl", "row-words.wgsl", "sample-rows.wgsl"],
      "sample rows with masks",
    );
  }

  #ensureKeptReadback(bytes: number): GPUBuffer {
    if (this.#keptReadback === null || this.#keptReadback.size < bytes) {
      const size = Math.max(bytes, 2 * (this.#keptReadback?.size ?? 0));
      this.#keptReadback?.destroy();
      const label = "sampler kept readback";
      this.#keptReadback = this.#device.createBuffer({ size, usage: MAP_READ | COPY_DST, label });
    }
    return this.#keptReadback;
  }

  #ensureRowWords(count: number): GPUBuffer {
    const bytes = Math.max(16, count * 4);
    if (this.#rowWords === null || this.#rowWords.size < bytes) {
      const size = Math.max(bytes, 2 * (this.#rowWords?.size ?? 0));
      this.#rowWords?.destroy();
    this.#keptReadback?.destroy();
      const label = "sampler row words";
      this.#rowWords = this.#device.createBuffer({ size, usage: STORAGE | COPY_DST | COPY_SRC, label });
    }
    return this.#rowWords;
  }

  #ensureEdits(count: number): void {
    const bytes = count * EDIT_WORDS * 4;
    if (this.#edits.size >= bytes) return;
    this.#edits.destroy();
    this.#edits = this.#device.createBuffer({ size: Math.max(bytes, 2 * this.#edits.size), usage: STORAGE | COPY_DST });
  }

  #uploadBuffer(bytes: number): GPUBuffer {
    if (this.#upload === null || this.#upload.size < bytes) {
      this.#upload?.destroy();
      this.#upload = this.#device.createBuffer({ size: bytes, usage: STORAGE | COPY_DST, label: "sampler logits" });
    }
    return this.#upload;
  }
}

// The ids of a bitmask of n tokens from word `at`, ascending.
function idsOf(words: Uint32Array, at: number, n: number): Int32Array {
  const end = at + Math.ceil(n / 32);
  let count = 0;
  for (let w = at; w < end; w++) {
    let bits = words[w];
    while (bits !== 0) {
      count++;
      bits &= bits - 1;
    }
  }
  const ids = new Int32Array(count);
  let j = 0;
  for (let w = at; w < end; w++) {
    let bits = words[w];
    while (bits !== 0) {
      const low = bits & -bits;
      ids[j++] = (w - at) * 32 + 31 - Math.clz32(low);
      bits ^= low;
    }
  }
  return ids;
}

function checkRow(row: GpuSampleRow, logitsRow: number, n: number): void {
  const fail = (what: string) => {
    throw new RangeError(`GPU sampling row: ${what}`);
  };
  if (!Number.isInteger(logitsRow) || logitsRow < 0) fail(`logitsRow ${logitsRow} is not a row index`);
  if (!(row.temperature >= 0) || !Number.isFinite(row.temperature)) fail(`temperature ${row.temperature}`);
  if (!(row.topP > 0 && row.topP <= 1)) fail(`top_p ${row.topP} is not in (0, 1]`);
  if (!(row.minP >= 0 && row.minP <= 1)) fail(`min_p ${row.minP} is not in [0, 1]`);
  if (!Number.isInteger(row.topK) || row.topK < 0) fail(`top_k ${row.topK}`);
  if (!(row.uniform > 0 && row.uniform < 1)) fail(`uniform number ${row.uniform} is not in (0, 1)`);
  const top = row.topLogprobs;
  if (top !== null && !(Number.isInteger(top) && top >= 0 && top <= GPU_MAX_TOP)) fail(`top logprobs ${top}`);
  for (const edit of row.edits ?? []) {
    if (!Number.isInteger(edit.tokenId) || edit.tokenId < 0 || edit.tokenId >= n) fail(`edit of token ${edit.tokenId}`);
  }
}
