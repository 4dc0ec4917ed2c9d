"""Sends N sequential `echo.echo` calls over one keep-alive connection to rpc.sock and
checks each answer (examples/instructions/run.sh)."""
import http.client
import json
import socket
import sys


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


connection = UnixConnection(sys.argv[1])
body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "echo.echo", "params": {"message": "hello"}})
for _ in range(int(sys.argv[2])):
    connection.request("POST", "/rpc", body, {"content-type": "application/json"})
    answer = connection.getresponse()
    data = answer.read()
    if answer.status != 200 or b'"result"' not in data:
        sys.exit(f"a call failed: {answer.status} {data[:200]!r}")
