/** What a benchmark reads off the machine while it runs: cores busy (its own and everyone else's) and memory. */
import * as fs from "node:fs";
import * as os from "node:os";
import process from "node:process";
import { round } from "./report.ts";

/** Resident set size of this process, in bytes. */
export function rssBytes(): number {
  return process.memoryUsage().rss;
}

/** Samples the process's resident memory on a timer (and on demand) and keeps the peak. */
export class RssSampler {
  peak = 0;
  #timer: ReturnType<typeof setInterval> | null = null;

  /** Starts sampling every `intervalMs` (model runs are asynchronous, so the timer fires during them). */
  start(intervalMs = 20): this {
    this.sample();
    this.#timer = setInterval(() => this.sample(), intervalMs);
    return this;
  }

  sample(): void {
    this.peak = Math.max(this.peak, rssBytes());
  }

  stop(): number {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    this.sample();
    return this.peak;
  }
}

/** Busy and idle CPU time of the whole machine (Linux's /proc/stat, in clock ticks), or null elsewhere. */
function machineTicks(): { busy: number; total: number } | null {
  try {
    const fields = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1, 9).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    return { busy: total - fields[3] - fields[4], total };
  } catch {
    return null;
  }
}

/**
 * How many cores this process and the rest of the machine kept busy over an interval: the machine is shared, and a
 * run that had to share its cores says so (`other_cores` well above 0).
 */
export class CpuMeter {
  #wall = 0;
  #process = process.cpuUsage();
  #machine = machineTicks();

  start(): this {
    this.#wall = performance.now();
    this.#process = process.cpuUsage();
    this.#machine = machineTicks();
    return this;
  }

  /** Average cores busy since start: this process's, and everything else's where the machine tells. */
  stop(): { process_cores: number; other_cores: number | null } {
    const seconds = (performance.now() - this.#wall) / 1000;
    const usage = process.cpuUsage(this.#process);
    const processCores = (usage.user + usage.system) / 1e6 / seconds;
    const [before, after] = [this.#machine, machineTicks()];
    let other: number | null = null;
    if (before && after && after.total > before.total) {
      const cores = os.cpus().length;
      const busyCores = ((after.busy - before.busy) / (after.total - before.total)) * cores;
      other = Math.max(0, busyCores - processCores);
    }
    return { process_cores: round(processCores), other_cores: other === null ? null : round(other) };
  }
}
