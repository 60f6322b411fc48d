"""Queue: the Redis Streams boundary and entry acknowledgement."""
