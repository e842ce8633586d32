"""apbd-runner: claims queued jobs from the spool and builds them (see apbd.runner.daemon)."""
