"""MQTT: the wire protocol, the shared client (connection, TLS, backoff), the device source, the estimate sink
and the embedded broker."""
