"""Fetches credentials the way boto3 does by default and prints them as one JSON line:
{"access_key_id", "secret_access_key", "session_token", "expiration", "fetch_ms"}.

Run by the iamlet integration tests inside a fake pod (tests/src/clients.rs), with an empty
environment apart from PATH and HOME (an empty directory), so botocore's default chain ends
at the instance metadata service, with its default endpoint, timeout and attempts.

--imds-v1: before resolving, make botocore's IMDSv2 token fetch return None (what it does
when the PUT /latest/api/token gets 403/404/405 or times out, e.g. when a hop limit drops
the answer), so botocore falls back to tokenless IMDSv1 GETs.
"""

import json
import logging
import sys
import time

import boto3
import botocore.utils


class OneLineFormatter(logging.Formatter):
    """botocore logs connection errors with full tracebacks: keep the last line only."""

    def formatException(self, ei):
        return f"    caused by {ei[0].__name__}: {ei[1]}"


def main():
    v1 = "--imds-v1" in sys.argv[1:]
    # botocore's own debug lines about the metadata service go to stderr (shown on failure).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(name)s %(levelname)s %(message)s"))
    for name in ("botocore.utils", "botocore.credentials"):
        log = logging.getLogger(name)
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
    if v1:
        botocore.utils.IMDSFetcher._fetch_metadata_token = lambda self: None

    session = boto3.Session()
    start = time.monotonic()
    creds = session.get_credentials()
    if creds is None:
        sys.exit("imds_client.py: boto3 found no credentials (see botocore's log above)")
    frozen = creds.get_frozen_credentials()
    fetch_ms = (time.monotonic() - start) * 1000.0

    expiry = getattr(creds, "_expiry_time", None)
    out = {
        "access_key_id": frozen.access_key,
        "secret_access_key": frozen.secret_key,
        "session_token": frozen.token,
        "expiration": expiry.isoformat() if expiry is not None else None,
        "method": getattr(creds, "method", None),
        "fetch_ms": fetch_ms,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
