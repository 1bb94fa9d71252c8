// ExternalSigner backed by a conclave threshold Ed25519 key: every call spawns
// `conclave external-signer` (message bytes on stdin, the signature on stdout; on failure a
// stable code on stderr). Zero dependencies.

import { spawn } from "node:child_process";

const CODES = new Set([
  "SIGNER_UNAVAILABLE",
  "SIGNER_TIMEOUT",
  "SIGNER_REFUSED",
  "SIGNER_BAD_INPUT",
  "SIGNER_BAD_RESPONSE",
]);

export class SignerError extends Error {
  constructor(code, message, exitCode) {
    super(message);
    this.name = "SignerError";
    this.code = code;
    this.exitCode = exitCode;
  }
}

function toBytes(value) {
  if (typeof value === "string") return Buffer.from(value, "utf8");
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw new SignerError("SIGNER_BAD_INPUT", "expected a Uint8Array or a string", null);
}

function hashHex(hash) {
  const hex = typeof hash === "string" ? hash.trim() : Buffer.from(toBytes(hash)).toString("hex");
  if (!/^([0-9a-fA-F]{64}|[0-9a-fA-F]{128})$/.test(hex)) {
    throw new SignerError("SIGNER_BAD_INPUT", "a hash is 32 or 64 bytes (64 or 128 hex digits)", null);
  }
  return hex;
}

export class ConclaveSigner {
  #command;
  #args;
  #env;
  #timeoutMs;
  #address;

  constructor(options = {}) {
    this.#command = options.command ?? process.env.CONCLAVE_BIN ?? "conclave";
    this.#args = [];
    if (options.clientConfig) this.#args.push("--client-config", options.clientConfig);
    if (options.group) this.#args.push("--group", options.group);
    this.#env = { ...process.env, ...(options.env ?? {}) };
    if (options.timeoutMs !== undefined) this.#env.SIGNER_TIMEOUT_MS = String(options.timeoutMs);
    // The deadline the child is given, whichever way it was set: the backstop follows it.
    const effective = this.#env.SIGNER_TIMEOUT_MS;
    if (effective !== undefined) {
      const ms = Number(effective);
      if (!Number.isInteger(ms) || ms < 1 || ms > 3600000) {
        throw new SignerError("SIGNER_BAD_INPUT", `timeoutMs / SIGNER_TIMEOUT_MS ${effective}: an integer from 1 to 3600000`, null);
      }
      this.#timeoutMs = ms;
    }
  }

  #run(extra, input) {
    return new Promise((resolve, reject) => {
      const child = spawn(this.#command, ["external-signer", ...this.#args, ...extra], {
        env: { ...this.#env, SIGNER_OUTPUT: "hex" },
        stdio: ["pipe", "pipe", "pipe"],
        // Its own process group, so the backstop reaches a wrapper script's children too.
        detached: true,
      });
      const out = [];
      const err = [];
      let killed = false;
      // A backstop beyond the signer's own deadline (process start included).
      const backstop = this.#timeoutMs === undefined ? null : setTimeout(() => {
        killed = true;
        try { process.kill(-child.pid, "SIGKILL"); } catch { child.kill("SIGKILL"); }
      }, this.#timeoutMs + 2000);
      child.stdout.on("data", (d) => out.push(d));
      child.stderr.on("data", (d) => err.push(d));
      child.on("error", (e) => {
        if (backstop) clearTimeout(backstop);
        reject(new SignerError("SIGNER_UNAVAILABLE", `cannot run ${this.#command}: ${e.message}`, null));
      });
      child.on("close", (status) => {
        if (backstop) clearTimeout(backstop);
        const stdout = Buffer.concat(out).toString("utf8").trim();
        const stderr = Buffer.concat(err).toString("utf8").trim();
        if (killed) return reject(new SignerError("SIGNER_TIMEOUT", `no answer within ${this.#timeoutMs} ms`, status));
        if (status === 0 && stdout) return resolve(stdout);
        const first = stderr.split("\n").find((l) => l.length > 0) ?? "";
        const code = first.split(":")[0];
        reject(new SignerError(CODES.has(code) ? code : "SIGNER_UNAVAILABLE", first || `exit status ${status}`, status));
      });
      child.stdin.on("error", () => {});
      child.stdin.end(input ?? Buffer.alloc(0));
    });
  }

  async getAddress() {
    if (this.#address === undefined) {
      const hex = await this.#run(["--public-key"], null);
      if (!/^[0-9a-f]{64}$/.test(hex)) throw new SignerError("SIGNER_BAD_RESPONSE", "not a public key", 0);
      this.#address = hex;
    }
    return this.#address;
  }

  async signMessage(message) {
    return this.#checked(await this.#run([], toBytes(message)));
  }

  async signHash(hash) {
    return this.#checked(await this.#run(["--hash"], Buffer.from(hashHex(hash), "utf8")));
  }

  #checked(hex) {
    if (!/^[0-9a-f]{128}$/.test(hex)) throw new SignerError("SIGNER_BAD_RESPONSE", "not an Ed25519 signature", 0);
    return hex;
  }
}
