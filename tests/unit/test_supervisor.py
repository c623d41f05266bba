"""`leadflow up` refuses to start on a taken port, and says which one and how to move it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from leadflow.config import StackSettings
from leadflow.supervisor import Stack

pytestmark = pytest.mark.unit


def test_a_taken_port_is_named_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        monkeypatch.setenv("LEADFLOW_NURTURE_PORT", str(port))
        stack = Stack(
            StackSettings(
                data_dir=tmp_path / "data",
                kafka_bootstrap="127.0.0.1:1",  # external: nothing of ours to start
                mongo_url="mongodb://127.0.0.1:1/",
            )
        )
        with pytest.raises(RuntimeError, match=rf"{port} \(LEADFLOW_NURTURE_PORT\)"):
            stack.start()
    assert stack.services == []
    assert stack.infra.children == []
    assert not (tmp_path / "data").exists()
