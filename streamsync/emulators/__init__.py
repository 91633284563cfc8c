"""Emulators of the Salesforce and Iterable APIs; they import nothing from the rest of streamsync."""
