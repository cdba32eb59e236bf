"""``python -m api.keys create NAME [--admin]``: make an API key.

Prints the key once (give it to the client; it is not stored anywhere) and the entry to add to
``STRUCTQ_API_KEYS`` (a JSON list), which holds only the key's SHA-256.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys

from api.auth import hash_key
from api.settings import ApiKey

__all__ = ["main", "new_key"]


def new_key() -> str:
    return "sq_" + secrets.token_urlsafe(32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.keys")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key and print its STRUCTQ_API_KEYS entry")
    create.add_argument("name", help="the key's name (recorded on the jobs it submits)")
    create.add_argument("--admin", action="store_true", help="sees every job; admin endpoints")
    args = parser.parse_args(argv)
    key = new_key()
    entry = ApiKey(name=args.name, sha256=hash_key(key), admin=args.admin)
    print(f"key (give it to the client; shown once): {key}")
    print("STRUCTQ_API_KEYS entry:")
    print(json.dumps(entry.model_dump()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
