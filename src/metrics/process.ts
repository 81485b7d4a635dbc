/**
 * The `process_*` series every Prometheus client library exports, with their names and units, from the process's
 * usage read at each scrape. A figure the runtime or system cannot give is left out rather than reported wrong.
 */
import { type ProcessUsage, processUsage } from "../runtime/process-usage.ts";
import { Registry } from "./registry.ts";

const SERIES: [keyof ProcessUsage, string, "gauge" | "counter", string][] = [
  ["residentBytes", "process_resident_memory_bytes", "gauge", "Resident memory size in bytes."],
  ["virtualBytes", "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."],
  ["cpuSeconds", "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."],
  ["openFds", "process_open_fds", "gauge", "Number of open file descriptors."],
  ["maxFds", "process_max_fds", "gauge", "Maximum number of open file descriptors."],
  ["startTimeSeconds", "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."],
];

/** The process series as Prometheus text (empty when none is known). */
export function renderProcessMetrics(usage: ProcessUsage = processUsage()): string {
  const r = new Registry();
  let any = false;
  for (const [key, name, type, help] of SERIES) {
    const value = usage[key];
    if (value === null) continue;
    if (type === "counter") r.counter(name, help).inc({}, Math.max(0, value));
    else r.gauge(name, help).set(value);
    any = true;
  }
  return any ? r.render() : "";
}
