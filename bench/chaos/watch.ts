/**
 * Watching the server from outside: its resident memory every second (from /proc for a child we started, else
 * process_resident_memory_bytes from /metrics where the server exports it), and its request gauges in /metrics,
 * which must fall back to 0 once the load stops.
 */
const round = (value: number, digits = 1) => Number(value.toFixed(digits));

/** The value of the first sample of `name` (any labels) in Prometheus text, or null. */
export function metricValue(text: string, name: string): number | null {
  for (const line of text.split("\n")) {
    if (line.startsWith(name) && (line[name.length] === "{" || line[name.length] === " ")) {
      return Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return null;
}

async function metricsText(base: string): Promise<string> {
  const res = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(10_000) });
  return await res.text();
}

/** Samples resident memory every `everyMs` from `read` (MB, or null when it cannot tell). */
export class RssWatch {
  readonly samples: number[] = [];
  #timer: ReturnType<typeof setInterval> | null = null;

  constructor(readonly read: () => Promise<number | null>) {}

  /** A reader for a server at `base`: /proc for `pid` when given, else its /metrics. */
  static of(base: string, procRss: (() => number | null) | null): RssWatch {
    if (procRss) return new RssWatch(() => Promise.resolve(procRss()));
    return new RssWatch(async () => {
      const bytes = metricValue(await metricsText(base).catch(() => ""), "process_resident_memory_bytes");
      return bytes === null ? null : bytes / 2 ** 20;
    });
  }

  start(everyMs = 1000): this {
    const sample = () => void this.read().then((mb) => mb !== null && this.samples.push(mb), () => {});
    sample();
    this.#timer = setInterval(sample, everyMs);
    return this;
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Start, peak and end in MB, and the growth from the first third's mean to the last third's, in percent. */
  figures(): {
    rss_start_mb: number | null;
    rss_peak_mb: number | null;
    rss_end_mb: number | null;
    rss_growth_pct: number | null;
  } {
    const s = this.samples;
    if (s.length < 3) return { rss_start_mb: null, rss_peak_mb: null, rss_end_mb: null, rss_growth_pct: null };
    const third = Math.floor(s.length / 3);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = mean(s.slice(0, third));
    const last = mean(s.slice(s.length - third));
    return {
      rss_start_mb: round(s[0], 1),
      rss_peak_mb: round(Math.max(...s), 1),
      rss_end_mb: round(s[s.length - 1], 1),
      rss_growth_pct: round((last / first - 1) * 100, 1),
    };
  }
}

/** Waits up to `withinMs` for running and waiting requests to be 0; returns how long it took, or the last values. */
export async function gaugesSettle(base: string, withinMs: number) {
  const started = performance.now();
  let running: number | null = null;
  let waiting: number | null = null;
  let inFlight: number | null = null;
  while (true) {
    const text = await metricsText(base).catch(() => "");
    running = metricValue(text, "vllm:num_requests_running");
    waiting = metricValue(text, "vllm:num_requests_waiting");
    inFlight = metricValue(text, "gym_edge:http_requests_in_flight");
    const ms = Math.round(performance.now() - started);
    if (running === 0 && waiting === 0) {
      return { settled: true, settle_ms: ms, running, waiting, http_in_flight: inFlight };
    }
    if (ms > withinMs) return { settled: false, settle_ms: ms, running, waiting, http_in_flight: inFlight };
    await new Promise((r) => setTimeout(r, 250));
  }
}
