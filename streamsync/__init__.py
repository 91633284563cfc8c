"""streamsync: keeps Iterable user profiles in step with Salesforce (CDC + backfill)."""
