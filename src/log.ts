/** A leveled logger writing one line per event to stderr. */
export type LogLevel = "debug" | "info" | "warn" | "error";
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

/** A logger that prints events at `level` and above. */
export function createLogger(level: LogLevel = "info"): Logger {
  const at = (l: LogLevel) => (msg: string) => {
    if (ORDER[l] >= ORDER[level]) console.error(`${new Date().toISOString()} ${l.toUpperCase()} ${msg}`);
  };
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** A logger that prints nothing (library use, tests). */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
