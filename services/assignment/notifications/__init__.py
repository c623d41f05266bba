"""Notifications: the rep (and their manager) learns at once that a lead needs them.

Speed to lead starts with the rep knowing. Routing writes nothing for notifications: they
are planned from assignment's own published events (read back through the chassis batch
consumer, one transaction per batch) and delivered by workers on the chassis due-work
collection, so a slow or dead mail server or webhook never holds routing up.

- `rules`: pure decisions: who is told what, through which channel, when to retry, how a
  webhook is signed and what each message says.
- `channels`: the senders: email over SMTP (aiosmtplib) and signed webhooks (httpx).
- `store`: the `notifications` (one document per delivery, its status visible to managers)
  and `notification_feed` (what each rep's live stream shows) collections.
- `usecases`: plan (events -> feed entries + delivery jobs), deliver (due jobs -> senders,
  with back-off), and the feed that `GET /v1/me/stream` follows on any replica.
- `api`: `GET /v1/me/stream` (server-sent events) and `GET /v1/notifications`.
"""
