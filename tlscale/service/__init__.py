"""`tlscale serve`: a multi-tenant fine-tuning job API (teams, tokens, files, a durable queue) that runs
tlscale job specs for the teams sharing a machine or a cluster. Needs the `service` extra."""
