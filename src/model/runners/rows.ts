/**
 * The row bookkeeping every runner keeps, whatever holds its KV: the checks of a step's rows and of KV ranges, the
 * guard that keeps rows unchanged while a step is in flight, the tokens each row holds, and when the slots per row
 * change.
 */
import type { RowInput } from "../../engine/model-runner.ts";

/** Checks a step's rows and returns the tokens its longest row feeds (the run's sequence length). */
export function checkStep(inputs: readonly RowInput[], maxRows: number, maxLength: number): number {
  if (inputs.length === 0) throw new Error("step: no rows");
  const seen = new Set<number>();
  for (const r of inputs) {
    checkRow(r.row, maxRows);
    if (seen.has(r.row)) throw new Error(`step: row ${r.row} appears twice`);
    seen.add(r.row);
    if (r.tokens.length === 0) throw new Error(`step: row ${r.row} has no tokens`);
    if (!Number.isInteger(r.start) || r.start < 0 || r.start + r.tokens.length > maxLength) {
      throw new Error(`step: row ${r.row} feeds [${r.start}, ${r.start + r.tokens.length}), past the maximum ${maxLength}`);
    }
  }
  return Math.max(...inputs.map((r) => r.tokens.length));
}

/** Throws unless `row` is one of `maxRows` rows. */
export function checkRow(row: number, maxRows: number): void {
  if (!Number.isInteger(row) || row < 0 || row >= maxRows) throw new Error(`row ${row} is outside [0, ${maxRows})`);
}

/** Throws unless `rows` is a count of rows a runner of `maxRows` rows can hold. */
export function checkRowCount(rows: number, maxRows: number): void {
  if (!Number.isInteger(rows) || rows < 0 || rows > maxRows) throw new Error(`${rows} rows is outside [0, ${maxRows}]`);
}

/** Throws unless tokens [start, start + length) of `row` are inside rows of `capacity` slots. */
export function checkRange(row: number, start: number, length: number, maxRows: number, capacity: number): void {
  checkRow(row, maxRows);
  if (start < 0 || length < 0 || start + length > capacity) {
    throw new Error(`tokens [${start}, ${start + length}) are outside row capacity ${capacity}`);
  }
}

/** Throws unless `data` holds `length` tokens of the canonical KV layout. */
export function checkCanonical(length: number, data: Float32Array, floatsPerToken: number): void {
  if (data.length < length * floatsPerToken) {
    throw new Error(`${length} tokens need ${length * floatsPerToken} floats, got ${data.length}`);
  }
}

/**
 * Refuses calls that change the rows (reserve, copyRow, writeKv) while a step is in flight: its run may still be
 * reading the row buffers, or write the rows it runs when it ends.
 */
export class StepGuard {
  #stepping = false;

  /** Runs `step` (queued and run) with the rows marked busy. */
  async during<T>(step: () => Promise<T>): Promise<T> {
    this.#stepping = true;
    try {
      return await step();
    } finally {
      this.#stepping = false;
    }
  }

  /** Throws when a step is in flight; `what` names the refused call. */
  idle(what: string): void {
    if (this.#stepping) throw new Error(`${what} while a step is running`);
  }
}

/** Tokens known to be in each row: what the slots per row must keep when they shrink. */
export class RowLengths {
  readonly #lengths: Int32Array;

  constructor(maxRows: number) {
    this.#lengths = new Int32Array(maxRows);
  }

  /** Tokens `row` holds. */
  of(row: number): number {
    return this.#lengths[row];
  }

  /** After a step: each row holds tokens up to the end of what it fed. */
  stepped(inputs: readonly RowInput[]): void {
    for (const r of inputs) this.#lengths[r.row] = r.start + r.tokens.length;
  }

  /** After writeKv: blocks arrive in order from slot 0, so a write there starts the row anew. */
  wrote(row: number, start: number, length: number): void {
    this.#lengths[row] = start === 0 ? length : Math.max(this.#lengths[row], start + length);
  }

  /** `row` holds `length` tokens (copied into it). */
  set(row: number, length: number): void {
    this.#lengths[row] = length;
  }

  /** `row` holds nothing: its tokens no longer keep the slots from shrinking. */
  release(row: number): void {
    this.#lengths[row] = 0;
  }

  /** Every row holds nothing. */
  clear(): void {
    this.#lengths.fill(0);
  }

  /** The tokens the longest row holds, or `length` when that is more. */
  longest(length: number): number {
    return Math.max(length, ...this.#lengths);
  }

  /** Rows [0, n) reach the last row holding tokens: n (0 when every row is empty). */
  used(): number {
    return this.#lengths.findLastIndex((n) => n > 0) + 1;
  }
}

/**
 * Slots per row to lay rows out for, when they need `target` and have `current`: more at once; fewer only once a
 * quarter of the current slots would do, so that lengths going up and down do not re-lay rows out every step.
 */
export function slotsFor(target: number, current: number): number {
  return target > current || target * 4 <= current ? target : current;
}
