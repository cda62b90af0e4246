// Fetches credentials the way the AWS SDK for JavaScript v3 does from the instance metadata
// service (`fromInstanceMetadata()` with its defaults) and prints them as one JSON line:
// {"access_key_id", "secret_access_key", "session_token", "expiration", "fetch_ms"}.
//
// Run by the iamlet integration tests inside a fake pod (tests/src/clients.rs), with an
// empty environment apart from PATH and HOME (an empty directory).
"use strict";

const { fromInstanceMetadata } = require("@aws-sdk/credential-providers");

// The SDK's own debug lines go to stderr (shown when the client fails).
const log = (level) => (...args) =>
  process.stderr.write(`${level} ${args.map((a) => (typeof a === "string" ? a : String(a))).join(" ")}\n`);
const logger = { trace: log("TRACE"), debug: log("DEBUG"), info: log("INFO"), warn: log("WARN"), error: log("ERROR") };

async function main() {
  const provider = fromInstanceMetadata({ logger });
  const start = process.hrtime.bigint();
  const creds = await provider();
  const fetchMs = Number(process.hrtime.bigint() - start) / 1e6;
  const out = {
    access_key_id: creds.accessKeyId,
    secret_access_key: creds.secretAccessKey,
    session_token: creds.sessionToken ?? null,
    expiration: creds.expiration ? creds.expiration.toISOString() : null,
    fetch_ms: fetchMs,
  };
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  const status = err && err.statusCode !== undefined ? ` (status ${err.statusCode})` : "";
  process.stderr.write(`imds-client.js: ${err && err.stack ? err.stack : err}${status}\n`);
  process.exit(1);
});
