"""The relay firehose, from socket to typed events: the websocket reader, frame decoding, the
pre-filter, the connection loop and the cursor's low-water mark. Everything but stream.py is pure."""
