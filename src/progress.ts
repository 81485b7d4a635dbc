/**
 * Progress of long work (building a model, converting a checkpoint, downloading from the hub) on stderr: on a
 * terminal, a bar redrawn in place; otherwise (a pipe, a log collector, --log-format json) one log line every few
 * seconds with the same figures, so that a long silence never looks like a hang.
 */
import process from "node:process";

/** What a Progress measures: bytes (shown in MB) or a count of things (tensors, files). */
export type ProgressUnit = "bytes" | { name: string };

/** Where a Progress writes, and how often. */
export interface ProgressOptions {
  /** Writes one log line (the logger's info, for instance). */
  log: (message: string) => void;
  /** Redraw a bar in place on stderr (default: stderr is a terminal). */
  bar?: boolean;
  /** Least milliseconds between two log lines, or two redraws of the bar (default 5000 for lines, 200 for the bar). */
  everyMs?: number;
  /** The clock, in milliseconds (tests pass their own). */
  now?: () => number;
  /** Writes raw text to the terminal for the bar (default: stderr). */
  write?: (text: string) => void;
}

const MB = 2 ** 20;
const BAR_WIDTH = 24;

/** Whether stderr is a terminal a bar can be drawn on. */
export function stderrIsTerminal(): boolean {
  return Boolean((process.stderr as { isTTY?: boolean }).isTTY);
}

/** One piece of long work: `total` units (null when unknown), reported as they are done. */
export class Progress {
  readonly #what: string;
  readonly #total: number | null;
  readonly #unit: ProgressUnit;
  readonly #log: (message: string) => void;
  readonly #bar: boolean;
  readonly #every: number;
  readonly #now: () => number;
  readonly #write: (text: string) => void;
  readonly #started: number;
  #last: number;
  #done = 0;
  #finished = false;

  constructor(what: string, total: number | null, unit: ProgressUnit, options: ProgressOptions) {
    this.#what = what;
    this.#total = total !== null && total > 0 ? total : null;
    this.#unit = unit;
    this.#log = options.log;
    this.#bar = options.bar ?? stderrIsTerminal();
    this.#every = options.everyMs ?? (this.#bar ? 200 : 5000);
    this.#now = options.now ?? (() => performance.now());
    this.#write = options.write ?? ((text) => process.stderr.write(text));
    this.#started = this.#last = this.#now();
  }

  /** Units done so far. */
  get done(): number {
    return this.#done;
  }

  /** Adds `units` done. */
  add(units: number): void {
    this.set(this.#done + units);
  }

  /** Sets the units done; reports when the interval since the last report has passed. */
  set(done: number): void {
    this.#done = done;
    const now = this.#now();
    if (this.#finished || now - this.#last < this.#every) return;
    this.#last = now;
    if (this.#bar) this.#write(`\r${this.#barText(now)}\x1b[K`);
    else this.#log(`${this.#what}: ${this.#figures(now)}`);
  }

  /** Reports the end: what was done and how long it took (the bar is completed and left on its line). */
  finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    const now = this.#now();
    const seconds = (now - this.#started) / 1000;
    if (this.#bar) this.#write(`\r${this.#barText(now)}\x1b[K\n`);
    this.#log(`${this.#what}: done, ${this.#amount(this.#done)} in ${seconds.toFixed(1)} s${this.#rateText(now)}`);
  }

  #fraction(): number | null {
    return this.#total === null ? null : Math.min(1, this.#done / this.#total);
  }

  #amount(units: number): string {
    return this.#unit === "bytes" ? `${(units / MB).toFixed(units >= 10 * MB ? 0 : 1)} MB` : `${units} ${this.#unit.name}`;
  }

  #rate(now: number): number {
    const seconds = (now - this.#started) / 1000;
    return seconds > 0 ? this.#done / seconds : 0;
  }

  #rateText(now: number): string {
    const rate = this.#rate(now);
    if (rate <= 0) return "";
    return this.#unit === "bytes" ? `, ${(rate / MB).toFixed(1)} MB/s` : `, ${rate.toFixed(1)} ${this.#unit.name}/s`;
  }

  #eta(now: number): string {
    const rate = this.#rate(now);
    if (this.#total === null || rate <= 0) return "";
    return `, ETA ${Math.ceil(Math.max(0, this.#total - this.#done) / rate)} s`;
  }

  /** "45% (120 MB of 266 MB, 12.3 MB/s, ETA 12 s)", or "120 MB (12.3 MB/s)" without a total. */
  #figures(now: number): string {
    const fraction = this.#fraction();
    if (fraction === null) {
      const rate = this.#rateText(now);
      return rate === "" ? this.#amount(this.#done) : `${this.#amount(this.#done)} (${rate.slice(2)})`;
    }
    const of = `${this.#amount(this.#done)} of ${this.#amount(this.#total!)}`;
    return `${Math.floor(fraction * 100)}% (${of}${this.#rateText(now)}${this.#eta(now)})`;
  }

  #barText(now: number): string {
    const fraction = this.#fraction();
    if (fraction === null) return `${this.#what} ${this.#figures(now)}`;
    const filled = Math.round(fraction * BAR_WIDTH);
    return `${this.#what} [${"#".repeat(filled)}${".".repeat(BAR_WIDTH - filled)}] ${this.#figures(now)}`;
  }
}
