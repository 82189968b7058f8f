"""Lab Streaming Layer: machine-scope configuration, the executor for blocking pylsl calls, the inlet source,
the estimate outlets and XDF replay. pylsl is imported lazily, so a missing liblsl breaks only ``lsl:`` URIs."""
