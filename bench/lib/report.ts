/** The one JSON line per measurement every engine benchmark prints, and the figures' rounding and medians. */
import * as os from "node:os";
import process from "node:process";
import { runtimeName, runtimeVersion } from "../../src/runtime/detect.ts";
import { processUsage } from "../../src/runtime/process-usage.ts";

/** The median (upper middle for an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Rounds for printing. */
export function round(value: number, digits = 2): number {
  return Number(value.toFixed(digits));
}

/** The 1, 5 and 15 minute load averages: the machine is shared, so every line says how busy it was. */
export function loadAverage(): number[] {
  return os.loadavg().map((v) => round(v));
}

const MB = 2 ** 20;

/**
 * The process's resident memory now and at its highest so far, in MB (null where the runtime cannot tell): the
 * whole process, model thread and weights included, since benchmarks run the engine in their own process.
 */
export function residentMemory(): { rss_mb: number | null; peak_rss_mb: number | null } {
  const now = processUsage().residentBytes;
  let peak: number | null = null;
  try {
    // maxRSS is in kB on Node, Deno and Bun alike.
    peak = process.resourceUsage().maxRSS * 1024;
  } catch {
    // not offered by this runtime
  }
  const mb = (bytes: number | null) => (bytes === null || !Number.isFinite(bytes) ? null : Math.round(bytes / MB));
  return { rss_mb: mb(now), peak_rss_mb: mb(peak) };
}

/** Prints one measurement as a JSON line: what, runtime, backend, model, then the figures and the process's memory. */
export function report(
  what: string,
  flags: { device: string; preset: string; hostCache?: boolean; dtype?: string },
  figures: Record<string, unknown>,
): void {
  console.log(JSON.stringify({
    what,
    runtime: runtimeName(),
    version: runtimeVersion(),
    backend: flags.device === "webgpu" && flags.hostCache ? "webgpu (host cache)" : flags.device,
    model: flags.preset,
    dtype: flags.dtype ?? "fp32",
    ...figures,
    ...residentMemory(),
    cores: os.cpus().length,
    load_average: loadAverage(),
  }));
}
