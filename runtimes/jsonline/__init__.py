"""Runtimes speaking the line-JSON worker protocol (sdk/PROTOCOL.md):
local worker processes over stdio, and logic servers over TCP."""

from runtimes.jsonline.codec import MAX_LINE, PROTOCOL_VERSION, HostCodec, ProtocolError
from runtimes.jsonline.stdio import StdioRuntime
from runtimes.jsonline.tcp import TcpRuntime

__all__ = ["HostCodec", "ProtocolError", "PROTOCOL_VERSION", "MAX_LINE",
           "StdioRuntime", "TcpRuntime"]
