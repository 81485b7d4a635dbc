/** The one JSON line per measurement every engine benchmark prints, and the figures' rounding and medians. */
import * as os from "node:os";
import { runtimeName, runtimeVersion } from "../../src/runtime/detect.ts";

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

/** Prints one measurement as a JSON line: what, runtime, backend, model, then the figures. */
export function report(
  what: string,
  flags: { device: string; preset: string; hostCache?: boolean },
  figures: Record<string, unknown>,
): void {
  console.log(JSON.stringify({
    what,
    runtime: runtimeName(),
    version: runtimeVersion(),
    backend: flags.device === "webgpu" && flags.hostCache ? "webgpu (host cache)" : flags.device,
    model: flags.preset,
    dtype: "fp32",
    ...figures,
    cores: os.cpus().length,
    load_average: loadAverage(),
  }));
}
