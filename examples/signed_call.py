#!/usr/bin/env python3
"""Call a capability through hero_executor from Python, signing the request with
RFC 9421 HTTP Message Signatures (Ed25519) using the `http-message-signatures` package.

    pip install -r examples/requirements.txt
    python3 examples/signed_call.py echo.echo '{"message": "hi"}' --key agent.pem --keyid agent-1

The key is a PKCS#8 PEM written by `hero_executor keygen` and enrolled with
`hero_executor keys add`. The request is sent over the executor's Unix socket.
"""

import argparse
import http.client
import json
import os
import secrets
import socket
import sys

import requests
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms


class OneKey(HTTPSignatureKeyResolver):
    """Resolves every keyid to the one private key we hold."""

    def __init__(self, private_key):
        self.private_key = private_key

    def resolve_private_key(self, key_id):
        return self.private_key

    def resolve_public_key(self, key_id):
        raise NotImplementedError("this example only signs")


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket."""

    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def default_socket_dir():
    for var in ("HERO_SOCKET_DIR", "PATH_SOCKET"):
        if os.environ.get(var):
            return os.environ[var]
    return os.path.expanduser("~/hero/var/sockets")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("capability", help="<service>.<method>, e.g. echo.echo")
    parser.add_argument("params", nargs="?", default="{}", help="params as JSON")
    parser.add_argument("--key", required=True, help="PKCS#8 PEM private key")
    parser.add_argument("--keyid", required=True, help="the keyid the key is enrolled under")
    parser.add_argument("--context", type=int, help="X-Hero-Context")
    parser.add_argument("--socket-dir", default=default_socket_dir())
    args = parser.parse_args()

    with open(args.key, "rb") as f:
        private_key = load_pem_private_key(f.read(), password=None)
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": args.capability, "params": json.loads(args.params)}
    ).encode()
    headers = {"Content-Type": "application/json"}
    covered = ["@method", "@path"]
    if args.context is not None:
        headers["X-Hero-Context"] = str(args.context)
        covered.append("x-hero-context")  # every X-Hero-* header must be signed
    request = requests.Request("POST", "http://localhost/rpc", data=body, headers=headers).prepare()

    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=OneKey(private_key))
    signer.sign(
        request,
        key_id=args.keyid,
        label="sig1",
        nonce=secrets.token_urlsafe(16),  # the executor refuses replays
        covered_component_ids=covered,
        body=body,  # adds Content-Digest and covers it
    )

    print(f"request signed: {request.headers['Signature-Input']}", file=sys.stderr)
    conn = UnixHTTPConnection(os.path.join(args.socket_dir, "hero_executor", "rpc.sock"))
    conn.request("POST", "/rpc", body=body, headers=dict(request.headers))
    response = conn.getresponse()
    answer = json.loads(response.read())
    if "error" in answer:
        print(f"error {answer['error']['code']}: {answer['error']['message']}", file=sys.stderr)
        return 1
    print(json.dumps(answer["result"], indent=2))
    print(f"signed by the executor: {response.getheader('Signature-Input')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
