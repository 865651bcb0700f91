"""What the firehose did not show: discovery of candidate repos, proof fetching per record, the
resumable backfill job and the gap-repair worker."""
