/** A stable failure code of `conclave external-signer`. */
export type SignerErrorCode =
  | "SIGNER_UNAVAILABLE"
  | "SIGNER_TIMEOUT"
  | "SIGNER_REFUSED"
  | "SIGNER_BAD_INPUT"
  | "SIGNER_BAD_RESPONSE";

/** A typed failure: `code` is the stable code, `exitCode` the process's exit status. */
export class SignerError extends Error {
  readonly code: SignerErrorCode;
  readonly exitCode: number | null;
  constructor(code: SignerErrorCode, message: string, exitCode: number | null);
}

/** The signer interface an executor programs against. */
export interface ExternalSigner {
  /** The group's Ed25519 public key, 64 hex characters. */
  getAddress(): Promise<string>;
  /** An Ed25519 signature (128 hex characters) of the message bytes (a string is UTF-8). */
  signMessage(message: Uint8Array | string): Promise<string>;
  /**
   * A signature of a 32- or 64-byte digest (bytes, or hex), signed as those bytes: FROST(Ed25519)
   * has no Ed25519ph, so verifiers check the signature over the digest itself.
   */
  signHash(hash: Uint8Array | string): Promise<string>;
}

export interface ConclaveSignerOptions {
  /** The conclave binary (default "conclave", or $CONCLAVE_BIN). */
  command?: string;
  /** The client config (default: $CONCLAVE_CLIENT_CONFIG, else ~/.config/conclave/client.toml). */
  clientConfig?: string;
  /** The group (default: the client config's). */
  group?: string;
  /** Deadline of each call in milliseconds, process start included (SIGNER_TIMEOUT_MS). */
  timeoutMs?: number;
  /** Extra environment for the child process. */
  env?: Record<string, string>;
}

/** An ExternalSigner that spawns `conclave external-signer` per call. */
export class ConclaveSigner implements ExternalSigner {
  constructor(options?: ConclaveSignerOptions);
  getAddress(): Promise<string>;
  signMessage(message: Uint8Array | string): Promise<string>;
  signHash(hash: Uint8Array | string): Promise<string>;
}
