"""The Sfumato client SDK (httpx only). The full SDK and CLI come with the client-side issue."""

__version__ = "0.1.0"
