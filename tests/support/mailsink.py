"""A real SMTP server on loopback (aiosmtpd) that keeps every message it accepts.

Recipients can be told to be refused with a code (550: for good, 451: try later), so the
senders' handling of SMTP refusals is tested against the protocol, not a mock.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import threading
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from leadflow.localinfra import LOOPBACK, free_port


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: email.message.EmailMessage


class _Handler:
    def __init__(self, sink: MailSink) -> None:
        self._sink = sink

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, _: list[str]
    ) -> str:
        code = self._sink.refused.get(address.lower())
        if code is not None:
            return f"{code} mailbox refused (test)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        self._sink.keep(Mail(str(envelope.mail_from), tuple(envelope.rcpt_tos), parsed))
        return "250 Message accepted"


class MailSink:
    def __init__(self) -> None:
        self.host = LOOPBACK
        self.port = free_port()
        self.refused: dict[str, int] = {}
        self._lock = threading.Lock()
        self._messages: list[Mail] = []
        self._controller = Controller(
            _Handler(self), hostname=self.host, port=self.port, decode_data=False
        )

    def keep(self, mail: Mail) -> None:
        with self._lock:
            self._messages.append(mail)

    @property
    def messages(self) -> list[Mail]:
        with self._lock:
            return list(self._messages)

    def to(self, address: str) -> list[Mail]:
        return [m for m in self.messages if address in m.rcpt_tos]

    def __enter__(self) -> MailSink:
        self._controller.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._controller.stop()
