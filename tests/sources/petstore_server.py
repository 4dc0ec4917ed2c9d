"""A few operations of the Swagger Petstore (the OpenAPI 3.0 document from the npm package
@readme/oas-examples), for tests/sources.rs. Listens on 127.0.0.1 (the port given after the
spec, else a free one; printed as `PORT <n>`), serves its spec at /openapi.yaml, and the API under /v2. Every API call
needs the `api_key` header to equal $PETSTORE_KEY.

Misbehaviours on purpose, by pet id: 999 echoes the caller's api_key in the pet's name,
301 redirects to pet 1 on the same origin, 302 redirects to another host (localhost),
700 answers HTML.
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

SPEC = open(sys.argv[1], "rb").read()
KEY = os.environ["PETSTORE_KEY"]
PETS = {
    1: {"id": 1, "name": "Rex", "photoUrls": [], "status": "available"},
    2: {"id": 2, "name": "Tom", "photoUrls": [], "status": "sold"},
}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=None, content_type="application/json", headers=()):
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def route(self, method):
        url = urlparse(self.path)
        if method == "GET" and url.path == "/openapi.yaml":
            return self.answer(200, SPEC, "application/yaml")
        if not url.path.startswith("/v2/"):
            return self.answer(404, {"message": "not found"})
        if self.headers.get("api_key") != KEY:
            return self.answer(401, {"message": "missing or wrong api_key"})
        parts = url.path[len("/v2/"):].split("/")
        if parts == ["pet"] and method == "POST":
            pet = self.body()
            with LOCK:
                PETS[pet["id"]] = pet
            return self.answer(200, pet)
        if parts == ["pet", "findByStatus"] and method == "GET":
            wanted = parse_qs(url.query).get("status", [])
            return self.answer(200, [p for p in PETS.values() if p.get("status") in wanted])
        if len(parts) == 3 and parts[0] == "pet" and parts[2] == "vaccinate" and method == "POST":
            return self.answer(200, {"vaccinated": int(parts[1])})
        if len(parts) == 2 and parts[0] == "pet":
            try:
                pet_id = int(parts[1])
            except ValueError:
                return self.answer(400, {"message": "Invalid ID supplied", "got": parts[1]})
            if method == "GET":
                if pet_id == 999:
                    return self.answer(200, {"id": 999, "name": "the key is " + self.headers["api_key"]})
                if pet_id == 301:
                    return self.answer(302, b"", headers=[("Location", "/v2/pet/1")])
                if pet_id == 302:
                    port = self.server.server_address[1]
                    return self.answer(302, b"", headers=[("Location", f"http://localhost:{port}/v2/pet/1")])
                if pet_id == 700:
                    return self.answer(200, b"<html>not json</html>", "text/html")
                pet = PETS.get(pet_id)
                if pet is None:
                    return self.answer(404, {"code": 1, "type": "error", "message": "Pet not found"})
                return self.answer(200, pet)
            if method == "DELETE":
                with LOCK:
                    gone = PETS.pop(pet_id, None)
                return self.answer(200 if gone else 404, b"" if gone else {"message": "Pet not found"})
        return self.answer(405, {"message": f"{method} {url.path} is not implemented here"})

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def do_DELETE(self):
        self.route("DELETE")


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0), Handler)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
