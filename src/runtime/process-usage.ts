/**
 * What the process uses now (memory, CPU time, file descriptors) and when it started: through node:process, which
 * Node, Deno and Bun all provide, and Linux's /proc. A figure this runtime or system cannot give is null, never a
 * guess.
 */
import process from "node:process";
import { readdirSync, readFileSync } from "node:fs";

/** The process's resources; null where they cannot be read here. */
export interface ProcessUsage {
  residentBytes: number | null;
  virtualBytes: number | null;
  /** User plus system CPU time, all threads. */
  cpuSeconds: number | null;
  openFds: number | null;
  /** The soft limit on open descriptors. */
  maxFds: number | null;
  /** Seconds since the Unix epoch. */
  startTimeSeconds: number | null;
}

/** Runs `read`; null when it throws or gives something that is not a finite number. */
function attempt(read: () => number | null): number | null {
  try {
    const value = read();
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  } catch {
    return null;
  }
}

function residentBytes(): number {
  // memoryUsage.rss() skips the heap statistics that memoryUsage() gathers.
  const rss = (process.memoryUsage as { rss?: () => number }).rss;
  return typeof rss === "function" ? rss() : process.memoryUsage().rss;
}

/** A `Name:   N kB` line of /proc/self/status, in bytes. */
function statusBytes(field: string): number | null {
  const match = new RegExp(`^${field}:\\s*(\\d+) kB$`, "m").exec(readFileSync("/proc/self/status", "utf8"));
  return match ? Number(match[1]) * 1024 : null;
}

function cpuSeconds(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

function openFds(): number {
  // The listing holds one descriptor open itself, on each runtime: the directory being read.
  return readdirSync("/proc/self/fd").length - 1;
}

function maxFds(): number | null {
  const match = /^Max open files\s+(\d+)\s/m.exec(readFileSync("/proc/self/limits", "utf8"));
  return match ? Number(match[1]) : null;
}

// Once: the start does not move, and a later change of the clock should not move it either.
const startTimeSeconds = attempt(() => Date.now() / 1000 - process.uptime());

/** The process's resources now. */
export function processUsage(): ProcessUsage {
  return {
    residentBytes: attempt(residentBytes),
    virtualBytes: attempt(() => statusBytes("VmSize")),
    cpuSeconds: attempt(cpuSeconds),
    openFds: attempt(openFds),
    maxFds: attempt(maxFds),
    startTimeSeconds,
  };
}
