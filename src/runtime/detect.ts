/** Which JavaScript runtime this process runs on. The rest of the code asks here, never the globals. */
export type RuntimeName = "deno" | "bun" | "node";

// deno-lint-ignore no-explicit-any
const g = globalThis as any;

/** The runtime this process runs on. */
export function runtimeName(): RuntimeName {
  if (typeof g.Deno?.version?.deno === "string") return "deno";
  if (typeof g.Bun?.version === "string") return "bun";
  return "node";
}

/** A short "name version" string for logs and benchmarks. */
export function runtimeVersion(): string {
  switch (runtimeName()) {
    case "deno":
      return `deno ${g.Deno.version.deno}`;
    case "bun":
      return `bun ${g.Bun.version}`;
    default:
      return `node ${process.versions.node}`;
  }
}
