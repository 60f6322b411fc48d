"""Records: the recorder (one sink for outcomes), the audit log, reports, progress."""
