// Run by tests/tests/node_adapter.rs against a real cluster: CONCLAVE_BIN and
// CONCLAVE_CLIENT_CONFIG point at it; CONCLAVE_DOWN_CONFIG names a coordinator that is down.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createPublicKey, verify } from "node:crypto";
import { ConclaveSigner, SignerError } from "../index.js";

function publicKey(hex) {
  // SubjectPublicKeyInfo for Ed25519 (RFC 8410): fixed 12-byte prefix, then the key.
  const der = Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), Buffer.from(hex, "hex")]);
  return createPublicKey({ key: der, format: "der", type: "spki" });
}

const configured = process.env.CONCLAVE_BIN && process.env.CONCLAVE_CLIENT_CONFIG;

test("signMessage and signHash verify with crypto.verify under getAddress()", { skip: !configured && "run by cargo test (tests/tests/node_adapter.rs)" }, async () => {
  const signer = new ConclaveSigner({ timeoutMs: 5000 });
  const address = await signer.getAddress();
  assert.match(address, /^[0-9a-f]{64}$/);
  const key = publicKey(address);
  const message = "executor release 2.0.0";
  const sig = await signer.signMessage(message);
  assert.ok(verify(null, Buffer.from(message), key, Buffer.from(sig, "hex")));
  assert.ok(!verify(null, Buffer.from("another message"), key, Buffer.from(sig, "hex")));
  const digest = Buffer.alloc(32, 7);
  const hsig = await signer.signHash(digest);
  assert.ok(verify(null, digest, key, Buffer.from(hsig, "hex")));
  await assert.rejects(signer.signHash("abcd"), (e) => e instanceof SignerError && e.code === "SIGNER_BAD_INPUT");
});

test("a bad timeout is refused at construction", () => {
  assert.throws(() => new ConclaveSigner({ timeoutMs: Number.NaN }), (e) => e instanceof SignerError && e.code === "SIGNER_BAD_INPUT");
  assert.throws(() => new ConclaveSigner({ timeoutMs: 0 }), (e) => e instanceof SignerError && e.code === "SIGNER_BAD_INPUT");
});

test("an unreachable coordinator is a typed SIGNER_UNAVAILABLE", { skip: !process.env.CONCLAVE_DOWN_CONFIG && "run by cargo test" }, async () => {
  const signer = new ConclaveSigner({ clientConfig: process.env.CONCLAVE_DOWN_CONFIG, timeoutMs: 500 });
  await assert.rejects(signer.signMessage("m"), (e) => e instanceof SignerError && e.code === "SIGNER_UNAVAILABLE" && e.exitCode === 10);
});
