/**
 * Counters, gauges and histograms with labels, rendered in the Prometheus text exposition format (version 0.0.4).
 * Small on purpose: the server has a few dozen series, scraped every few seconds.
 */

export type Labels = Record<string, string | number>;

/** The content type of the text format. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function formatNumber(n: number): string {
  if (Number.isNaN(n)) return "NaN";
  if (n === Infinity) return "+Inf";
  if (n === -Infinity) return "-Inf";
  return String(n);
}

function labelText(labels: Labels, extra?: [string, string]): string {
  const pairs = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(String(v))}"`);
  if (extra) pairs.push(`${extra[0]}="${escapeLabel(extra[1])}"`);
  return pairs.length ? `{${pairs.join(",")}}` : "";
}

/** A metric family: one name, one type, series by label values. */
abstract class Metric<S> {
  readonly #series = new Map<string, { labels: Labels; state: S }>();

  constructor(readonly name: string, readonly help: string, readonly constLabels: Labels) {
    if (!NAME.test(name)) throw new Error(`invalid metric name ${name}`);
  }

  abstract readonly type: "counter" | "gauge" | "histogram";
  protected abstract fresh(): S;
  protected abstract lines(name: string, labels: Labels, state: S): string[];

  protected series(labels: Labels = {}): S {
    const all = { ...this.constLabels, ...labels };
    const keys = Object.keys(all).sort();
    for (const k of keys) if (!LABEL.test(k)) throw new Error(`invalid label name ${k} on ${this.name}`);
    const key = keys.map((k) => `${k}=${all[k]}`).join("\u0000");
    let entry = this.#series.get(key);
    if (!entry) this.#series.set(key, entry = { labels: all, state: this.fresh() });
    return entry.state;
  }

  /** This family's lines of the exposition text. */
  render(): string {
    const out = [`# HELP ${this.name} ${this.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`, `# TYPE ${this.name} ${this.type}`];
    for (const { labels, state } of this.#series.values()) out.push(...this.lines(this.name, labels, state));
    return out.join("\n");
  }
}

/** A value that only goes up. Its name ends in `_total`. */
export class Counter extends Metric<{ value: number }> {
  readonly type = "counter";
  protected fresh() {
    return { value: 0 };
  }
  protected lines(name: string, labels: Labels, s: { value: number }) {
    return [`${name}${labelText(labels)} ${formatNumber(s.value)}`];
  }
  /** Adds `by` (default 1; never negative). */
  inc(labels?: Labels, by = 1): void {
    if (by < 0) throw new Error(`counter ${this.name} cannot decrease`);
    this.series(labels).value += by;
  }
  /** Makes a series exist (at 0) so that it shows before its first event. */
  touch(labels?: Labels): void {
    this.series(labels);
  }
  /** Follows a running total kept elsewhere (an engine statistic): moves up to it, never down. */
  advanceTo(total: number, labels?: Labels): void {
    const s = this.series(labels);
    if (total > s.value) s.value = total;
  }
}

/** A value that goes up and down (set at scrape time from live state, usually). */
export class Gauge extends Metric<{ value: number }> {
  readonly type = "gauge";
  protected fresh() {
    return { value: 0 };
  }
  protected lines(name: string, labels: Labels, s: { value: number }) {
    return [`${name}${labelText(labels)} ${formatNumber(s.value)}`];
  }
  set(value: number, labels?: Labels): void {
    this.series(labels).value = value;
  }
}

interface HistogramState {
  counts: number[];
  sum: number;
  count: number;
}

/** Observations counted into cumulative buckets (`le`), with their sum and count. */
export class Histogram extends Metric<HistogramState> {
  readonly type = "histogram";

  constructor(name: string, help: string, constLabels: Labels, readonly buckets: readonly number[]) {
    super(name, help, constLabels);
    for (let i = 1; i < buckets.length; i++) {
      if (!(buckets[i] > buckets[i - 1])) throw new Error(`histogram ${name}: buckets must increase`);
    }
  }

  protected fresh(): HistogramState {
    return { counts: new Array(this.buckets.length).fill(0), sum: 0, count: 0 };
  }

  protected lines(name: string, labels: Labels, s: HistogramState) {
    const out: string[] = [];
    let cumulative = 0;
    this.buckets.forEach((le, i) => {
      cumulative += s.counts[i];
      out.push(`${name}_bucket${labelText(labels, ["le", formatNumber(le)])} ${cumulative}`);
    });
    out.push(`${name}_bucket${labelText(labels, ["le", "+Inf"])} ${s.count}`);
    out.push(`${name}_sum${labelText(labels)} ${formatNumber(s.sum)}`);
    out.push(`${name}_count${labelText(labels)} ${s.count}`);
    return out;
  }

  observe(value: number, labels?: Labels): void {
    if (!Number.isFinite(value)) return;
    const s = this.series(labels);
    const i = this.buckets.findIndex((le) => value <= le);
    if (i >= 0) s.counts[i]++;
    s.sum += value;
    s.count++;
  }
}

/** The metric families of a server, in registration order; `constLabels` go on every series. */
export class Registry {
  readonly #metrics: { name: string; render(): string }[] = [];

  constructor(readonly constLabels: Labels = {}) {}

  counter(name: string, help: string): Counter {
    return this.#add(new Counter(name, help, this.constLabels));
  }

  gauge(name: string, help: string): Gauge {
    return this.#add(new Gauge(name, help, this.constLabels));
  }

  histogram(name: string, help: string, buckets: readonly number[]): Histogram {
    return this.#add(new Histogram(name, help, this.constLabels, buckets));
  }

  /** Every family as Prometheus text. */
  render(): string {
    return this.#metrics.map((m) => m.render()).join("\n") + "\n";
  }

  #add<M extends { name: string; render(): string }>(metric: M): M {
    if (this.#metrics.some((m) => m.name === metric.name)) throw new Error(`metric ${metric.name} registered twice`);
    this.#metrics.push(metric);
    return metric;
  }
}
