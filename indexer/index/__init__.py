"""From verified events to index writes: what each event changes (pure), and the pipeline that
orders events per repo and hands batches to the writer with the cursor."""
