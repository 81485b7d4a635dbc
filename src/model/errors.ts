/** Typed errors of model loading, so callers can tell a bad model or device from a bug. */

/** A model that cannot be loaded: a missing directory or file, or a config.json that makes no sense. */
export class ModelLoadError extends Error {
  override name = "ModelLoadError";
  /** The directory, file or hub id the message is about. */
  readonly path: string;

  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.path = path;
  }
}

/** A device that was asked for but does not work here; the message names the devices that do. */
export class DeviceUnavailableError extends Error {
  override name = "DeviceUnavailableError";
  readonly device: string;
  /** Why the device does not work, without the list of those that do. */
  readonly reason: string;
  readonly available: string[];

  constructor(device: string, reason: string, available: string[]) {
    super(
      `device "${device}" is not available: ${reason}. ` +
        `Available here: ${available.length > 0 ? available.join(", ") : "none"}.`,
    );
    this.device = device;
    this.reason = reason;
    this.available = available;
  }
}

/** Why weights cannot be used: no such path, a path outside the allowed directory, or not this model's weights. */
export type WeightsProblem = "not_found" | "forbidden" | "mismatch";

/** New weights (refit) that cannot be used, and why. */
export class WeightsError extends Error {
  constructor(readonly problem: WeightsProblem, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "WeightsError";
  }
}
