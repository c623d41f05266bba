"""Creating and revoking API keys (what `leadflow keys ...` does)."""

from __future__ import annotations

from datetime import UTC, datetime

from leadflow.chassis.auth import IssuedKey, Role, hash_key, issue_key
from leadflow.chassis.store import ApiKeyStore, Document, connect


async def create_key(
    mongo_url: str, identity_database: str, role: Role, name: str, rep_id: str | None = None
) -> IssuedKey:
    client = connect(mongo_url, app_name="leadflow-keys")
    try:
        issued, document = issue_key(role, name, rep_id, datetime.now(UTC))
        await ApiKeyStore(client[identity_database]).insert(document)
        return issued
    finally:
        await client.close()


async def list_keys(mongo_url: str, identity_database: str) -> list[Document]:
    client = connect(mongo_url, app_name="leadflow-keys")
    try:
        return await ApiKeyStore(client[identity_database]).list()
    finally:
        await client.close()


async def revoke_key(mongo_url: str, identity_database: str, key_id: str) -> bool:
    client = connect(mongo_url, app_name="leadflow-keys")
    try:
        return await ApiKeyStore(client[identity_database]).revoke(key_id, datetime.now(UTC))
    finally:
        await client.close()


async def key_is_valid(mongo_url: str, identity_database: str, key: str) -> bool:
    client = connect(mongo_url, app_name="leadflow-keys")
    try:
        return await ApiKeyStore(client[identity_database]).find(hash_key(key)) is not None
    finally:
        await client.close()
