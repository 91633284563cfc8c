"""Salesforce Campaign members as Iterable static list subscribers ([lists] in config.toml):
which list each mapped Campaign fills (`resolve`), which members count (`members`), the
real-time step the flusher runs for queued CampaignMember ids (`sync`) and the backfill that
brings every list to its Campaign's current membership (`backfill`). docs/design.md §8."""
