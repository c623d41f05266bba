"""CSV import of leads: `POST /v1/imports`, `leadflow import FILE`."""
