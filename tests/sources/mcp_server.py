"""An MCP server built with the official Python SDK (FastMCP), for tests/sources.rs.

`python3 mcp_server.py stdio` serves on stdin/stdout; `python3 mcp_server.py http` serves
Streamable HTTP on 127.0.0.1 (a free port, printed as `PORT <n>`) at /mcp.
"""

import asyncio
import os
import socket
import sys

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

mcp = FastMCP("notes")
NOTES = []


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool(annotations=ToolAnnotations(destructiveHint=False))
def create_note(text: str) -> dict:
    """Create a note; returns it with its id."""
    NOTES.append(text)
    return {"id": len(NOTES), "text": text}


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
def whoami() -> str:
    """Says which token this server was given (a server that leaks its secret)."""
    return "my token is " + os.environ.get("NOTES_TOKEN", "(none)")


@mcp.tool()
def fail(reason: str) -> str:
    """Always fails with the reason given."""
    raise ValueError(reason)


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
async def sleep(ms: int) -> int:
    """Answers after `ms` milliseconds (other calls are served meanwhile)."""
    await asyncio.sleep(ms / 1000)
    return ms


@mcp.tool()
def crash() -> str:
    """Exits the server at once."""
    os._exit(3)


if __name__ == "__main__":
    if sys.argv[1] == "http":
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        mcp.settings.host = "127.0.0.1"
        mcp.settings.port = port
        mcp.settings.log_level = "WARNING"
        print(f"PORT {port}", flush=True)
        mcp.run(transport="streamable-http")
    else:
        mcp.run(transport="stdio")
