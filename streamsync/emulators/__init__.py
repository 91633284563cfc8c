"""Emulators of the Salesforce and Iterable APIs.

They import nothing from the rest of streamsync."""
