"""Workers: read turns from the Redis stream (worker/stream_loop.py), talk to Botpress
(worker/botpress_client.py), and send each reply to the waiting edge over gRPC."""
